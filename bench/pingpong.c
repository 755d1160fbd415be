/* pfi-bench-pingpong: a parent and its child pass one byte back and forth over two pipes, forever.
 * Every round trip blocks the parent once (a voluntary context switch, as a major fault blocks its
 * task once on the disk read), so a tracer's cost per context switch of the task it traces shows as
 * CPU time per voluntary switch (/proc/PID/schedstat, /proc/PID/status). Prints "ready CHILD_PID".
 * Both die with the process that started them (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(void) {
    int a[2], b[2];
    char c = 0;
    if (pipe(a) || pipe(b)) { perror("pipe"); return 1; }
    prctl(PR_SET_NAME, "pfi-bench-pp", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
    pid_t p = fork();
    if (p == 0) {
        prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
        for (;;) { if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1) _exit(1); }
    }
    printf("ready %d\n", p);
    fflush(stdout);
    for (;;) { if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1) return 1; }
}
