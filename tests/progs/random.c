// Randomness from getrandom, /dev/urandom and a time/pid-seeded rand().
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
static void hex(const char *n, unsigned char *b, int len) {
    printf("%s ", n);
    for (int i = 0; i < len; i++) printf("%02x", b[i]);
    printf("\n");
}
int main(void) {
    unsigned char b[32];
    getrandom(b, sizeof b, 0);
    hex("getrandom", b, 32);
    int fd = open("/dev/urandom", O_RDONLY);
    read(fd, b, sizeof b);
    close(fd);
    hex("urandom", b, 32);
    srand(time(NULL) ^ getpid());
    printf("rand %d %d\n", rand(), rand());
    return 0;
}
