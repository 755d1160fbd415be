/* pfi-workload: the scenario matrix's workloads (tests/test_scenarios.py), each faulting for one reason.
 *
 * usage: scenario_faults reread PATH [ANON_MB]  re-read a mapped file forever (no dropping: only a memory
 *                                           limit smaller than the file makes it fault again); ANON_MB of
 *                                           anonymous memory touched once first and paged out to swap
 *                                           (MADV_PAGEOUT): swapped memory that is not what faults
 *        scenario_faults text PATH [drop]   execute code from a file mapping (PATH filled with 0xC3 "ret"):
 *                                           call one instruction in every page, forever; "drop" throws
 *                                           the pages away after each pass (cold code reads, no limit)
 *        scenario_faults text PATH drop RATE  the same, RATE pages a second, each one dropped right after
 *                                           its call: a trickle of cold code reads, as programs starting
 *                                           now and then make
 *        scenario_faults shm PATH SIZE_MB   a /dev/shm (tmpfs) file of SIZE_MB written, then re-written
 *                                           in a scattered order forever (swaps at a smaller limit)
 *
 * Waits for one line on stdin first, so the caller can move it into its cgroups before it touches
 * anything (the page cache is charged to whoever reads it first). Then prints
 *   ready pid=1234 start=0x7f0000000000 end=0x7f0008000000 pages=32768 page_size=4096
 * Read-ahead is off (MADV_RANDOM): one page read is one major fault.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

static void ready(volatile unsigned char *m, size_t size, long page) {
    printf("ready pid=%d start=%p end=%p pages=%zu page_size=%ld\n", getpid(), (void *)m,
           (void *)(m + size), size / page, page);
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s reread|text|shm PATH [drop|SIZE_MB]\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_NAME, "pfi-workload", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    long page = sysconf(_SC_PAGESIZE);
    const char *mode = argv[1];

    if (strcmp(mode, "shm") == 0) {
        if (argc < 4) return 2;
        size_t size = (size_t)atol(argv[3]) << 20, pages = size / page;
        int fd = open(argv[2], O_RDWR | O_CREAT, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)size) < 0) { perror("shm"); return 1; }
        volatile unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) { perror("mmap"); return 1; }
        madvise((void *)m, size, MADV_RANDOM);
        for (size_t i = 0; i < pages; i++) m[i * page] = (unsigned char)i | 1;
        ready(m, size, page);
        size_t stride = 7919, idx = 0;
        while (pages % stride == 0) stride += 2;
        for (;;) { idx = (idx + stride) % pages; m[idx * page] += 1; }
    }

    int fd = open(argv[2], O_RDONLY);
    if (fd < 0) { perror("open"); return 1; }
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size == 0) { fprintf(stderr, "empty file\n"); return 1; }
    size_t size = (size_t)st.st_size;
    int text = strcmp(mode, "text") == 0;
    int drop = text && argc > 3 && strcmp(argv[3], "drop") == 0;
    long rate = drop && argc > 4 ? atol(argv[4]) : 0; /* pages a second at most; 0: as fast as it goes */
    if (!text && argc > 3) { /* reread ANON_MB: anonymous memory touched once, then left alone */
        size_t anon = (size_t)atol(argv[3]) << 20;
        volatile unsigned char *a = mmap(NULL, anon, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (a == MAP_FAILED) { perror("mmap anon"); return 1; }
        madvise((void *)a, anon, MADV_NOHUGEPAGE);
        for (size_t i = 0; i < anon; i += page) a[i] = 1;
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif
        madvise((void *)a, anon, MADV_PAGEOUT); /* out to swap now, as an earlier squeeze would have */
    }
    volatile unsigned char *m = mmap(NULL, size, text ? PROT_READ | PROT_EXEC : PROT_READ, text ? MAP_PRIVATE : MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    madvise((void *)m, size, MADV_RANDOM);
    posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); /* start cold: the cache the writer left is dropped */
    ready(m, size, page);
    unsigned long sum = 0;
    for (;;) {
        for (size_t off = 0; off < size; off += page) {
            if (text) ((void (*)(void))(m + off))(); /* an instruction fetch from the file's page */
            else sum += m[off];
            if (rate > 0) { /* every call a cold read: the page cache may hold the file in one large folio */
                madvise((void *)m, size, MADV_DONTNEED);
                posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
                usleep((useconds_t)(1000000 / rate));
            }
        }
        if (drop) {
            madvise((void *)m, size, MADV_DONTNEED);
            posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        }
        if (sum == 42) fputc(0, stderr); /* keep the reads */
    }
}
