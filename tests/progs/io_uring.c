// io_uring is answered ENOSYS (with a warning naming it); a program that
// checks falls back.
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    char params[120] = {0};
    long r = syscall(SYS_io_uring_setup, 8, params);
    printf("io_uring_setup %ld %s\n", r, r < 0 ? strerror(errno) : "ok");
    return r < 0 ? 0 : 1;
}
