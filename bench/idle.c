/* pfi-bench-idle: fork N sleeping children (for the process-scan benchmark), print "ready N", wait.
 * Every child dies with its parent (PR_SET_PDEATHSIG) and they all share the parent's process group,
 * so killpg(parent) removes them all. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100;
    prctl(PR_SET_NAME, "pfi-bench-idle", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
    pid_t parent = getpid();
    long made = 0;
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
            if (getppid() != parent) _exit(0);
            for (;;) pause();
        }
        if (p > 0) made++;
    }
    printf("ready %ld\n", made);
    fflush(stdout);
    for (;;) pause();
}
