/* pfi-bench-minor: CPU-bound page faults, forever: map 4 MiB of anonymous memory, touch every page
 * (1,024 minor faults), unmap. A tracer of the fault event costs the faulting task the same per
 * event on minor and major faults; with no disk read in between, that cost is what its CPU time per
 * fault (/proc/PID/schedstat, minflt) shows. Prints "ready". Dies with its parent. */
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(void) {
    const size_t size = 4 << 20;
    prctl(PR_SET_NAME, "pfi-bench-minor", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return 1;
        for (size_t i = 0; i < size; i += 4096) p[i] = 1;
        munmap(p, size);
    }
}
