// AT_RANDOM (stack canary, pointer guard) and the address layout.
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>
int main(void) {
    unsigned char *r = (unsigned char *)getauxval(AT_RANDOM);
    printf("at_random ");
    for (int i = 0; i < 16; i++) printf("%02x", r[i]);
    int local;
    void *heap = malloc(100);
    printf("\nstack %p heap %p main %p\n", (void *)&local, heap, (void *)main);
    return 0;
}
