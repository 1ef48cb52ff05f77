#define _GNU_SOURCE
// A TCP echo server for readiness tests: `netserve MODE PORT CLIENTS` where
// MODE is epoll (level-triggered listener, EPOLLET|EPOLLONESHOT clients
// re-armed with EPOLL_CTL_MOD), poll or select. Each line a client sends is
// answered upper-cased with a running count; the server exits after CLIENTS
// connections have closed.
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

static long replies;

// Reads what is there; answers; returns 0 when the peer closed.
static int serve(int fd) {
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0) return 0;
        if (n < 0) return errno == EAGAIN ? 1 : 0;
        for (ssize_t i = 0; i < n; i++) buf[i] = toupper((unsigned char)buf[i]);
        char head[64];
        int h = snprintf(head, sizeof head, "%ld:", ++replies);
        write(fd, head, h);
        write(fd, buf, n);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *mode = argv[1];
    int port = atoi(argv[2]), clients = atoi(argv[3]);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(0x7f000001)};
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 64)) { perror("bind/listen"); return 1; }
    fcntl(ls, F_SETFL, O_NONBLOCK);
    printf("listening %s\n", mode);
    fflush(stdout);
    int closed = 0;
    if (!strcmp(mode, "epoll")) {
        int ep = epoll_create1(0);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls};
        epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
        while (closed < clients) {
            struct epoll_event evs[16];
            int n = epoll_wait(ep, evs, 16, 1000);
            for (int i = 0; i < n; i++) {
                int fd = evs[i].data.fd;
                if (fd == ls) {
                    int c;
                    while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                        struct epoll_event ce = {.events = EPOLLIN | EPOLLET | EPOLLONESHOT, .data.fd = c};
                        epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                    }
                } else if (serve(fd)) {
                    struct epoll_event ce = {.events = EPOLLIN | EPOLLET | EPOLLONESHOT, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ce);
                } else {
                    close(fd);
                    closed++;
                }
            }
        }
    } else if (!strcmp(mode, "poll")) {
        struct pollfd p[64] = {{.fd = ls, .events = POLLIN}};
        int np = 1;
        while (closed < clients) {
            if (poll(p, np, 1000) <= 0) continue;
            for (int i = np - 1; i >= 1; i--) {
                if (p[i].revents && !serve(p[i].fd)) {
                    close(p[i].fd);
                    p[i] = p[--np];
                    closed++;
                }
            }
            if (p[0].revents & POLLIN) {
                int c;
                while (np < 64 && (c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) p[np++] = (struct pollfd){.fd = c, .events = POLLIN};
            }
        }
    } else {
        int fds[64], nf = 0;
        while (closed < clients) {
            fd_set r;
            FD_ZERO(&r);
            FD_SET(ls, &r);
            int max = ls;
            for (int i = 0; i < nf; i++) { FD_SET(fds[i], &r); if (fds[i] > max) max = fds[i]; }
            struct timeval tv = {1, 0};
            if (select(max + 1, &r, NULL, NULL, &tv) <= 0) continue;
            for (int i = nf - 1; i >= 0; i--) {
                if (FD_ISSET(fds[i], &r) && !serve(fds[i])) {
                    close(fds[i]);
                    fds[i] = fds[--nf];
                    closed++;
                }
            }
            if (FD_ISSET(ls, &r)) {
                int c;
                while (nf < 64 && (c = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) fds[nf++] = c;
            }
        }
    }
    printf("replies %ld\n", replies);
    return 0;
}
