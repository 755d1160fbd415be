/* pfi-workload (cost): the workloads the whole-investigation cost rows (bench/cost.py) watch.
 *
 * usage: cost_faults seq SIZE_MB          anonymous memory written in order, page after page, forever:
 *                                         in a smaller memory cgroup with page-cluster 3, most pages
 *                                         come back by swap read-ahead (1 major fault brings 8)
 *        cost_faults scatter SIZE_MB      the same memory in a scattered order (no read-ahead helps)
 *        cost_faults threads PATH N       N threads re-reading their part of a mapped file from disk
 *                                         (MADV_RANDOM, then MADV_DONTNEED + POSIX_FADV_DONTNEED each
 *                                         pass): file-backed major faults on every core
 *
 * Waits for one line on stdin first (the caller moves it into its cgroup), then touches its memory
 * and prints "ready pid=.. start=0x.. end=0x.." once, like tests/workloads. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile unsigned char *m;
static size_t size, pages;
static long page;
static int fd = -1;
static long nthreads = 1;

static void *reader(void *arg) {
    long k = (long)arg;
    size_t lo = pages * k / nthreads, hi = pages * (k + 1) / nthreads;
    unsigned long sum = 0;
    for (;;) {
        for (size_t i = lo; i < hi; i++) sum += m[i * page];
        madvise((void *)(m + lo * page), (hi - lo) * page, MADV_DONTNEED);
        posix_fadvise(fd, (off_t)(lo * page), (off_t)((hi - lo) * page), POSIX_FADV_DONTNEED);
    }
    return (void *)sum;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s seq|scatter SIZE_MB | threads PATH N\n", argv[0]); return 2; }
    prctl(PR_SET_NAME, "pfi-workload", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    page = sysconf(_SC_PAGESIZE);
    if (strcmp(argv[1], "threads") == 0) {
        nthreads = argc > 3 ? atol(argv[3]) : 2;
        if (nthreads < 1 || nthreads > 64) nthreads = 2;
        fd = open(argv[2], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        struct stat st;
        if (fstat(fd, &st) < 0 || st.st_size == 0) { fprintf(stderr, "empty file\n"); return 1; }
        size = (size_t)st.st_size;
        pages = size / page;
        m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) { perror("mmap"); return 1; }
        madvise((void *)m, size, MADV_RANDOM);
        posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        printf("ready pid=%d start=%p end=%p pages=%zu page_size=%ld\n", getpid(), (void *)m,
               (void *)(m + size), pages, page);
        fflush(stdout);
        pthread_t t[64];
        for (long k = 0; k < nthreads; k++) pthread_create(&t[k], NULL, reader, (void *)k);
        for (long k = 0; k < nthreads; k++) pthread_join(t[k], NULL);
        return 0;
    }
    int scatter = strcmp(argv[1], "scatter") == 0;
    size = (size_t)atol(argv[2]) << 20;
    pages = size / page;
    m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    madvise((void *)m, size, MADV_NOHUGEPAGE); /* 4 KiB pages: one swap-in = one page */
    for (size_t i = 0; i < pages; i++) m[i * page] = (unsigned char)i | 1;
    printf("ready pid=%d start=%p end=%p pages=%zu page_size=%ld\n", getpid(), (void *)m,
           (void *)(m + size), pages, page);
    fflush(stdout);
    size_t stride = scatter ? 7919 : 1;
    while (scatter && pages % stride == 0) stride += 2;
    size_t idx = 0;
    for (;;) {
        idx = (idx + stride) % pages;
        m[idx * page] += 1;
    }
}
