// Process ids in the replica's PID namespace, and children reaped in order.
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    printf("pid %d ppid %d tid %ld\n", getpid(), getppid(), syscall(SYS_gettid));
    fflush(stdout);
    pid_t kids[3];
    for (int i = 0; i < 3; i++) {
        kids[i] = fork();
        if (kids[i] == 0) {
            printf("child %d pid %d ppid %d\n", i, getpid(), getppid());
            fflush(stdout);
            _exit(10 + i);
        }
    }
    for (int i = 0; i < 3; i++) {
        int st;
        pid_t p = waitpid(kids[i], &st, 0);
        printf("reaped %d status %d\n", p, WEXITSTATUS(st));
    }
    int st;
    printf("no more children: %d\n", (int)wait(&st));
    return 0;
}
