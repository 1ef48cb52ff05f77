// Twenty steps, each reading the clock and random bytes, appending a line to
// DIR/steps and sleeping 10 ms. A replay cut half way continues live: the
// file must end with all twenty lines in order and the clock never go back.
#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/steps", argv[1]);
    long long last = 0;
    for (int i = 0; i < 20; i++) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        long long ns = t.tv_sec * 1000000000LL + t.tv_nsec;
        unsigned r;
        getrandom(&r, sizeof r, 0);
        FILE *f = fopen(path, "a");
        fprintf(f, "step %d mono_ok %d rand %08x\n", i, ns >= last, r);
        fclose(f);
        printf("step %d mono_ok %d\n", i, ns >= last);
        fflush(stdout);
        last = ns;
        struct timespec d = {0, 10 * 1000 * 1000};
        nanosleep(&d, NULL);
    }
    printf("done\n");
    return 0;
}
