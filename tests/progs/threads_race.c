// Four threads race on a shared counter without locks, then ping-pong through
// a mutex/condvar. Natively the final counter and the interleaving differ run
// to run; under ftnet the recorded schedule must replay exactly.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile long counter;
static long order[64];
static int norder;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int turn;

static void *racer(void *arg) {
    long id = (long)arg;
    for (int i = 0; i < 200000; i++) {
        long v = counter;
        if ((i & 1023) == 0) sched_yield();
        counter = v + 1;
    }
    pthread_mutex_lock(&mu);
    if (norder < 64) order[norder++] = id;
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *ponger(void *arg) {
    long me = (long)arg;
    for (int i = 0; i < 500; i++) {
        pthread_mutex_lock(&mu);
        while (turn != me) pthread_cond_wait(&cv, &mu);
        turn = 1 - me;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

int main(void) {
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, racer, (void *)i);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    printf("counter %ld order", counter);
    for (int i = 0; i < norder; i++) printf(" %ld", order[i]);
    printf("\n");
    pthread_t p[2];
    for (long i = 0; i < 2; i++) pthread_create(&p[i], NULL, ponger, (void *)i);
    for (int i = 0; i < 2; i++) pthread_join(p[i], NULL);
    printf("ping-pong done turn %d\n", turn);
    return 0;
}
