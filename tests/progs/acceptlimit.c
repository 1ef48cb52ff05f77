#define _GNU_SOURCE
// Accept at the descriptor limit: `acceptlimit PORT` listens on 127.0.0.1,
// lowers RLIMIT_NOFILE to 32, fills every descriptor, waits for a client,
// and accepts: EMFILE, with the connection left queued. It closes one
// descriptor and accepts again: the same connection, which it answers.
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 8)) { perror("listen"); return 1; }
    struct rlimit r = {32, 32};
    if (setrlimit(RLIMIT_NOFILE, &r)) { perror("setrlimit"); return 1; }
    int last = -1, filled = 0;
    for (;;) {
        int d = dup(0);
        if (d < 0) break;
        last = d;
        filled++;
    }
    printf("filled %d descriptors up to %d: %s\n", filled, last, strerror(errno));
    struct pollfd p = {.fd = l, .events = POLLIN};
    if (poll(&p, 1, 20000) != 1) { printf("no client\n"); return 1; }
    int c = accept(l, NULL, NULL);
    printf("accept at the limit: %s\n", c < 0 ? strerror(errno) : "a descriptor?");
    if (c >= 0) return 1;
    close(last);
    c = accept(l, NULL, NULL);
    if (c < 0) { perror("accept after a close"); return 1; }
    printf("accepted after a close at fd %d\n", c);
    const char *hi = "hello from the limit\n";
    if (write(c, hi, strlen(hi)) < 0) perror("write");
    close(c);
    fflush(stdout);
    return 0;
}
