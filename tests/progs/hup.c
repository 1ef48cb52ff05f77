// Waits in pause() for three SIGHUPs sent from outside the tree; each is
// delivered at a syscall boundary the log records.
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static volatile sig_atomic_t hups;
static void on_hup(int s) { (void)s; hups++; }
int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    sigaction(SIGHUP, &sa, NULL);
    printf("ready\n");
    fflush(stdout);
    while (hups < 3) {
        pause();
        printf("hup %d\n", (int)hups);
        fflush(stdout);
    }
    return 0;
}
