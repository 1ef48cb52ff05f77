// fork + exec, system() (posix_spawn with vfork semantics), vfork + exec,
// and wait4 of each.
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
int main(void) {
    fflush(stdout);
    pid_t a = fork();
    if (a == 0) {
        execl("/bin/echo", "echo", "exec'd echo", (char *)NULL);
        _exit(127);
    }
    int st;
    waitpid(a, &st, 0);
    printf("fork+exec status %d\n", WEXITSTATUS(st));
    fflush(stdout);
    int r = system("echo from system; exit 3");
    printf("system status %d\n", WEXITSTATUS(r));
    fflush(stdout);
    pid_t v = vfork();
    if (v == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    waitpid(v, &st, 0);
    printf("vfork+exec status %d\n", WEXITSTATUS(st));
    pid_t s;
    char *args[] = {"sh", "-c", "exit 5", NULL};
    posix_spawn(&s, "/bin/sh", NULL, NULL, args, environ);
    waitpid(s, &st, 0);
    printf("posix_spawn status %d\n", WEXITSTATUS(st));
    return 0;
}
