// A refused call stops the recording with a message naming it.
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    char buf[64];
    printf("before\n");
    fflush(stdout);
    long r = syscall(SYS_syslog, 3, buf, sizeof buf);
    printf("syslog %ld\n", r);
    return 0;
}
