// Reads a file and writes it to stdout: a changed file must be named.
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror(argv[1]); return 1; }
    char buf[4096];
    ssize_t n;
    long total = 0;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        total += n;
        write(1, buf, n);
    }
    fprintf(stderr, "served %ld bytes\n", total);
    return 0;
}
