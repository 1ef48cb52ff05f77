// Reads a counter from DIR/counter (0 when missing), prints it and writes it
// back incremented: replay must run over a private copy of DIR as it was
// when recording started.
#include <stdio.h>
int main(int argc, char **argv) {
    char path[4096];
    snprintf(path, sizeof path, "%s/counter", argv[1]);
    long n = 0;
    FILE *f = fopen(path, "r");
    if (f) { if (fscanf(f, "%ld", &n) != 1) n = -1; fclose(f); }
    printf("counter was %ld\n", n);
    f = fopen(path, "w");
    if (!f) { perror(path); return 1; }
    fprintf(f, "%ld\n", n + 1);
    fclose(f);
    return 0;
}
