// Signals at syscall boundaries: interval timers with sigsuspend, alarm with
// pause, SIGCHLD, kill between processes, SIGPIPE, a handler interrupting a
// blocking read, and self-sent signals.
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t alrm, chld, usr1, pipes;
static void on_alrm(int s) { (void)s; alrm++; }
static void on_chld(int s) { (void)s; chld++; }
static void on_usr1(int s) { (void)s; usr1++; }
static void on_pipe(int s) { (void)s; pipes++; }

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sa.sa_handler = on_pipe;
    sigaction(SIGPIPE, &sa, NULL);

    // 1. setitimer + sigsuspend, with SIGALRM blocked outside sigsuspend.
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGALRM);
    sigprocmask(SIG_BLOCK, &block, &old);
    struct itimerval it = {{0, 5000}, {0, 5000}};
    setitimer(ITIMER_REAL, &it, NULL);
    while (alrm < 5) sigsuspend(&old);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    sigprocmask(SIG_SETMASK, &old, NULL);
    printf("itimer alarms %d\n", (int)alrm);

    // 2. alarm + pause.
    alarm(1);
    pause();
    printf("after pause alarms %d\n", (int)alrm);

    // 3. A child that waits for SIGUSR1 and exits; SIGCHLD to the parent.
    int p[2];
    pipe(p);
    pid_t kid = fork();
    if (kid == 0) {
        close(p[0]);
        write(p[1], "r", 1);
        while (!usr1) pause();
        _exit(42);
    }
    close(p[1]);
    char c;
    read(p[0], &c, 1);
    kill(kid, SIGUSR1);
    int st;
    while (waitpid(kid, &st, 0) < 0 && errno == EINTR) {}
    printf("child exit %d sigchld %d\n", WEXITSTATUS(st), chld > 0);

    // 4. A blocking read interrupted by a signal handler (no SA_RESTART).
    int q[2];
    pipe(q);
    alarm(1);
    ssize_t n = read(q[0], &c, 1);
    printf("read %zd errno %s\n", n, n < 0 ? strerror(errno) : "-");

    // 5. SIGPIPE: write to a pipe nobody reads.
    close(q[0]);
    n = write(q[1], "x", 1);
    printf("write %zd errno %s sigpipe %d\n", n, n < 0 ? strerror(errno) : "-", (int)pipes);

    // 6. Self-sent signal.
    raise(SIGUSR1);
    printf("usr1 %d\n", (int)usr1);
    return 0;
}
