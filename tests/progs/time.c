// Clocks and sleeps: every value differs natively run to run.
#include <stdio.h>
#include <sys/time.h>
#include <time.h>
static void show(const char *n, clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    printf("%s %ld.%09ld\n", n, (long)t.tv_sec, t.tv_nsec);
}
int main(void) {
    show("realtime", CLOCK_REALTIME);
    show("monotonic", CLOCK_MONOTONIC);
    show("boottime", CLOCK_BOOTTIME);
    show("coarse", CLOCK_MONOTONIC_COARSE);
    show("process", CLOCK_PROCESS_CPUTIME_ID);
    show("thread", CLOCK_THREAD_CPUTIME_ID);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    printf("gettimeofday %ld.%06ld time %ld\n", (long)tv.tv_sec, (long)tv.tv_usec, (long)time(NULL));
    struct timespec a, b, d = {0, 20 * 1000 * 1000};
    clock_gettime(CLOCK_MONOTONIC, &a);
    nanosleep(&d, NULL);
    clock_nanosleep(CLOCK_MONOTONIC, 0, &d, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("slept %ld ns\n", (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec));
    return 0;
}
