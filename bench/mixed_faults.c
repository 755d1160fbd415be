/* pfi-workload (mixed): file-backed major faults mixed with many minor faults, like the article's
 * filemajorpagefaults with its drop_caches loop, where most re-read pages are still cached.
 *
 * usage: mixed_faults PATH DROP_EVERY
 * Maps PATH read-only without read-ahead, reads one byte of every page, then unmaps the pages from
 * the process (MADV_DONTNEED: every next read faults) but drops only every DROP_EVERY-th page from
 * the page cache (POSIX_FADV_DONTNEED): those faults are major, the rest minor.
 * Prints "ready pid=.. start=0x.. end=0x.." once, like tests/workloads. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s PATH DROP_EVERY\n", argv[0]); return 2; }
    long every = atol(argv[2]);
    if (every < 1) every = 1;
    prctl(PR_SET_NAME, "pfi-workload", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size == 0) { fprintf(stderr, "empty file\n"); return 1; }
    size_t size = (size_t)st.st_size;
    long page = sysconf(_SC_PAGESIZE);
    volatile unsigned char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    madvise((void *)m, size, MADV_RANDOM);
    posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    printf("ready pid=%d start=%p end=%p pages=%zu page_size=%ld\n", getpid(), (void *)m,
           (void *)(m + size), size / page, page);
    fflush(stdout);
    unsigned long sum = 0;
    for (long pass = 0;; pass++) {
        for (size_t off = 0; off < size; off += page) sum += m[off];
        madvise((void *)m, size, MADV_DONTNEED);
        for (size_t off = (size_t)(pass % every) * page; off < size; off += (size_t)every * page)
            posix_fadvise(fd, (off_t)off, page, POSIX_FADV_DONTNEED);
    }
    return (int)(sum & 0);
}
