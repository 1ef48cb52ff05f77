// Pipes and socketpairs inside the tree run natively; a blocking reader
// parks without holding the token. A megabyte crosses a pipe in chunks and a
// socketpair ping-pongs.
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    int p[2];
    pipe(p);
    pid_t kid = fork();
    if (kid == 0) {
        close(p[0]);
        char buf[8192];
        for (int i = 0; i < 128; i++) {
            memset(buf, 'a' + i % 26, sizeof buf);
            write(p[1], buf, sizeof buf);
        }
        _exit(0);
    }
    close(p[1]);
    unsigned long sum = 0, total = 0;
    char buf[3000];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof buf)) > 0) {
        total += n;
        for (ssize_t i = 0; i < n; i++) sum = sum * 31 + (unsigned char)buf[i];
    }
    waitpid(kid, NULL, 0);
    printf("pipe total %lu sum %lx\n", total, sum);
    int sp[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sp);
    kid = fork();
    if (kid == 0) {
        int v;
        for (int i = 0; i < 100; i++) {
            read(sp[1], &v, sizeof v);
            v++;
            write(sp[1], &v, sizeof v);
        }
        _exit(0);
    }
    int v = 0;
    for (int i = 0; i < 100; i++) {
        write(sp[0], &v, sizeof v);
        read(sp[0], &v, sizeof v);
    }
    waitpid(kid, NULL, 0);
    printf("socketpair v %d\n", v);
    return 0;
}
