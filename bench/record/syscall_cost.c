// Cost of one intercepted call: N calls of a recorded syscall (getppid is
// native and not intercepted; clock_gettime via the raw syscall is recorded;
// a 1-byte read from /dev/zero is performed natively after interception).
// Prints nanoseconds per call for each, measured with CLOCK_MONOTONIC around
// the loop (under ftnet the clock is recorded too, which adds two calls).
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
static double now(void) {
    struct timespec t;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    struct timespec t;
    double a = now();
    for (long i = 0; i < n; i++) syscall(SYS_getppid);
    double b = now();
    for (long i = 0; i < n; i++) syscall(SYS_clock_gettime, CLOCK_REALTIME, &t);
    double c = now();
    int fd = open("/dev/zero", O_RDONLY);
    char x;
    for (long i = 0; i < n; i++) read(fd, &x, 1);
    double d = now();
    printf("native_ns %.0f recorded_ns %.0f continued_ns %.0f\n", (b - a) / n, (c - b) / n, (d - c) / n);
    return 0;
}
