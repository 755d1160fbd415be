/* pfi-workload: steady file-backed major page faults, without touching the rest of the machine.
 *
 * usage: file_faults PATH [PASSES]   (PASSES 0 or absent: run until killed)
 * env:   PFI_WORKLOAD_COMM sets comm (default "pfi-workload")
 *
 * Maps PATH read-only, turns read-ahead off (MADV_RANDOM: one page read = one major fault),
 * reads one byte of every page, then drops the pages from the mapping (MADV_DONTNEED) and from the
 * page cache (POSIX_FADV_DONTNEED) so that the next pass faults every page in from disk again.
 *
 * Prints one line when the mapping exists, then nothing (nobody has to drain stdout):
 *   ready pid=1234 start=0x7f0000000000 end=0x7f0004000000 pages=16384 page_size=4096
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PATH [PASSES]\n", argv[0]);
        return 2;
    }
    long passes = argc > 2 ? atol(argv[2]) : 0;
    /* comm "pfi-workload", or PFI_WORKLOAD_COMM (to test odd comm values: spaces, parentheses) */
    const char *comm = getenv("PFI_WORKLOAD_COMM");
    prctl(PR_SET_NAME, comm && *comm ? comm : "pfi-workload", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0); /* never outlive the test that started us */

    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size == 0) { fprintf(stderr, "empty file\n"); return 1; }
    size_t size = (size_t)st.st_size;
    long page = sysconf(_SC_PAGESIZE);
    volatile unsigned char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    if (madvise((void *)m, size, MADV_RANDOM) < 0) { perror("madvise random"); return 1; }
    posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);

    /* Start cold: nothing of the file in the page cache. */
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    printf("ready pid=%d start=%p end=%p pages=%zu page_size=%ld\n", getpid(), (void *)m,
           (void *)(m + size), size / page, page);
    fflush(stdout);

    unsigned long sum = 0;
    for (long pass = 0; passes == 0 || pass < passes; pass++) {
        for (size_t off = 0; off < size; off += page) sum += m[off];
        madvise((void *)m, size, MADV_DONTNEED);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    }
    return (int)(sum & 0); /* sum keeps the reads from being optimised away */
}
