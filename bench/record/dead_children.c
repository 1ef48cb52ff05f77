// Cost of a recorded call as the replica's dead children pile up (redis
// forks one per background save). Times CALLS (20,000) recorded
// clock_gettime syscalls, then forks and reaps CHILDREN (2,000) children,
// then times them again. Usage: dead_children [CHILDREN [CALLS]].
// Prints ns per call for both rounds. Run natively and under `ftnet record`.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double ns_per_call(int n) {
    struct timespec a, b, t;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
    clock_gettime(CLOCK_MONOTONIC, &b);
    return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}

int main(int argc, char **argv) {
    int children = argc > 1 ? atoi(argv[1]) : 2000;
    int calls = argc > 2 ? atoi(argv[2]) : 20000;
    double before = ns_per_call(calls);
    for (int i = 0; i < children; i++) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        if (p < 0 || waitpid(p, NULL, 0) != p) { perror("fork/wait"); return 1; }
    }
    double after = ns_per_call(calls);
    printf("children %d ns/call before %.0f after %.0f ratio %.2f\n", children, before, after, after / before);
    return 0;
}
