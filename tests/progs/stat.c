// Host facts: stat (inode, times), directory order, uname, /proc, sysinfo,
// CPU affinity.
#define _GNU_SOURCE
#include <dirent.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/etc/hostname";
    struct stat st;
    if (stat(path, &st) == 0) printf("stat %s ino %lu mtime %ld size %ld\n", path, (unsigned long)st.st_ino, (long)st.st_mtime, (long)st.st_size);
    DIR *d = opendir("/etc");
    for (int i = 0; d && i < 5; i++) {
        struct dirent *e = readdir(d);
        if (!e) break;
        printf("dirent %s\n", e->d_name);
    }
    if (d) closedir(d);
    struct utsname u;
    uname(&u);
    printf("uname %s %s\n", u.nodename, u.release);
    char buf[256] = {0};
    FILE *f = fopen("/proc/self/stat", "r");
    if (f) { fgets(buf, sizeof buf, f); fclose(f); }
    printf("proc %.60s\n", buf);
    struct sysinfo si;
    sysinfo(&si);
    printf("uptime %ld\n", si.uptime);
    cpu_set_t set;
    sched_getaffinity(0, sizeof set, &set);
    printf("cpus %d\n", CPU_COUNT(&set));
    char online[64] = {0};
    f = fopen("/sys/devices/system/cpu/online", "r");
    if (f) { fgets(online, sizeof online, f); fclose(f); }
    printf("sys online %s", online);
    const char *cap = getenv("OPENSSL_ia32cap");
    printf("openssl_ia32cap %s\n", cap ? cap : "unset");
    return 0;
}
