// rdtsc and rdtscp, trapped and emulated from the log.
#include <stdio.h>
#include <x86intrin.h>
int main(void) {
    unsigned aux;
    unsigned long long a = __rdtsc();
    unsigned long long b = __rdtscp(&aux);
    unsigned long long c = __rdtsc();
    printf("tsc %llu %llu %llu aux %u\n", a, b, c, aux);
    return 0;
}
