/* pfi-workload: the limit zoo's access patterns (issue 22; tests/test_zoo.py, python -m bench.zoo).
 *
 * usage: zoo_faults anon SIZE_MB seq|scatter   private anonymous memory touched once, then written forever
 *                                              in order (seq: swap readahead brings the next pages back
 *                                              without a fault) or in a scattered order (a stride coprime
 *                                              to the page count)
 *        zoo_faults file PATH seq              a mapped file read forever in order (MADV_RANDOM: a page read
 *                                              is a major fault)
 *        zoo_faults file PATH hot HOT_MB       the same file read at random pages: 99% of reads in its first
 *                                              HOT_MB, 1% anywhere in the rest (a hot set and a cold tail)
 *        zoo_faults file PATH ramp START_MB END_MB SECONDS
 *                                              a growing scan: one pass in order over the first START_MB,
 *                                              (ready after it), then random pages of a range that, from
 *                                              the first SIGUSR1 on (each one starts it again), grows from
 *                                              START_MB to END_MB over SECONDS (then stays), as many a
 *                                              second as the range has pages (a pass a second): beyond the
 *                                              limit, its refaults rise with the range
 *        zoo_faults pread PATH                 the file re-read forever in order by pread(), a page a call
 *                                              (POSIX_FADV_RANDOM: no read-ahead): no mapping, no major
 *                                              faults; its page cache refaults at a limit
 *        zoo_faults mixed ANON_MB PATH         ANON_MB of anonymous memory and a mapped file, a page of each
 *                                              in turn, both in order, forever
 *        zoo_faults prime PATH MB              read() the first MB of PATH once (its page cache is charged to
 *                                              this process's group), say ready, and wait
 *
 * Waits for one line on stdin first (the caller moves it into its cgroup), then prints
 *   ready pid=1234 start=0x7f0000000000 end=0x7f0008000000 pages=32768 page_size=4096
 * after touching (anon) or mapping (file) its memory. Huge pages off: one fault is one 4 KiB page.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long page;

static void ready(volatile unsigned char *m, size_t size) {
    printf("ready pid=%d start=%p end=%p pages=%zu page_size=%ld\n", getpid(), (void *)m, (void *)(m + size),
           size / page, page);
    fflush(stdout);
}

static volatile unsigned char *anon(size_t size) {
    volatile unsigned char *a = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) { perror("mmap anon"); exit(1); }
    madvise((void *)a, size, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < size; i += page) a[i] = (unsigned char)(i >> 12) | 1;
    return a;
}

static volatile unsigned char *file(const char *path, size_t *size) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size == 0) { perror("open"); exit(1); }
    *size = (size_t)st.st_size;
    volatile unsigned char *m = mmap(NULL, *size, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) { perror("mmap file"); exit(1); }
    madvise((void *)m, *size, MADV_RANDOM);
    posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
    return m;
}

static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }

static volatile sig_atomic_t restart; /* SIGUSR1: the ramp starts (again) from its start */
static void on_usr1(int sig) { (void)sig; restart = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s anon|file|mixed|prime ...\n", argv[0]);
        return 2;
    }
    prctl(PR_SET_NAME, "pfi-workload", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    page = sysconf(_SC_PAGESIZE);
    const char *mode = argv[1];
    unsigned long sum = 0;

    if (strcmp(mode, "anon") == 0 && argc > 3) {
        size_t size = (size_t)atol(argv[2]) << 20, pages = size / page;
        volatile unsigned char *a = anon(size);
        int seq = strcmp(argv[3], "seq") == 0;
        if (!seq) madvise((void *)a, size, MADV_RANDOM);
        ready(a, size);
        size_t stride = seq ? 1 : 7919, idx = 0;
        while (!seq && pages % stride == 0) stride += 2;
        for (;;) { idx = (idx + stride) % pages; a[idx * page] += 1; }
    }
    if (strcmp(mode, "file") == 0 && argc > 3) {
        size_t size;
        volatile unsigned char *m = file(argv[2], &size);
        size_t pages = size / page;
        if (strcmp(argv[3], "ramp") == 0 && argc > 6) {
            size_t from = ((size_t)atol(argv[4]) << 20) / page, to = ((size_t)atol(argv[5]) << 20) / page;
            double ramp = atof(argv[6]);
            if (from == 0 || to > pages || from > to || ramp <= 0) return 2;
            for (size_t idx = 0; idx < from; idx++) sum += m[idx * page];
            signal(SIGUSR1, on_usr1);
            ready(m, size); /* after the first pass: the range grows from the first SIGUSR1 on */
            double t0 = 0, due = now();
            for (;;) {
                if (restart) { restart = 0; t0 = now(); }
                double t = now() - t0;
                size_t n = t0 == 0 ? from : t >= ramp ? to : from + (size_t)((double)(to - from) * t / ramp);
                for (int i = 0; i < 64; i++) sum += m[(next() >> 8) % n * page];
                if (sum == 42) fputc(0, stderr);
                due += 64.0 / (double)n; /* n reads a second: sleep until the next 64 are due */
                double ahead = due - now();
                if (ahead > 0) {
                    struct timespec ts = {(time_t)ahead, (long)((ahead - (double)(time_t)ahead) * 1e9)};
                    nanosleep(&ts, NULL);
                } else if (ahead < -1.0) {
                    due = now() - 1.0; /* reads behind (faulting): at most a second of them are caught up */
                }
            }
        }
        ready(m, size);
        if (strcmp(argv[3], "hot") == 0 && argc > 4) {
            size_t hot = ((size_t)atol(argv[4]) << 20) / page;
            if (hot == 0 || hot >= pages) return 2;
            for (;;) {
                uint64_t r = next();
                size_t idx = r % 100 ? (r >> 8) % hot : hot + (r >> 8) % (pages - hot);
                sum += m[idx * page];
                if (sum == 42) fputc(0, stderr);
            }
        }
        for (size_t idx = 0;; idx = (idx + 1) % pages) {
            sum += m[idx * page];
            if (sum == 42) fputc(0, stderr);
        }
    }
    if (strcmp(mode, "pread") == 0) {
        int fd = open(argv[2], O_RDONLY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < page) { perror("open"); return 1; }
        posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
        static char buf[1 << 16];
        size_t pages = (size_t)st.st_size / page;
        ready((volatile unsigned char *)buf, (size_t)page); /* no mapping: the buffer's address */
        for (size_t idx = 0;; idx = (idx + 1) % pages) {
            if (pread(fd, buf, (size_t)page, (off_t)(idx * page)) < 0) { perror("pread"); return 1; }
            sum += (unsigned char)buf[0];
            if (sum == 42) fputc(0, stderr);
        }
    }
    if (strcmp(mode, "mixed") == 0 && argc > 3) {
        size_t asize = (size_t)atol(argv[2]) << 20, apages = asize / page, fsize;
        volatile unsigned char *a = anon(asize);
        volatile unsigned char *m = file(argv[3], &fsize);
        size_t fpages = fsize / page;
        ready(m, fsize);
        for (size_t i = 0;; i++) {
            a[(i % apages) * page] += 1;
            sum += m[(i % fpages) * page];
            if (sum == 42) fputc(0, stderr);
        }
    }
    if (strcmp(mode, "prime") == 0 && argc > 3) {
        size_t want = (size_t)atol(argv[3]) << 20, got = 0;
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) { perror("open"); return 1; }
        static char buf[1 << 16];
        while (got < want) {
            ssize_t n = read(fd, buf, sizeof buf < want - got ? sizeof buf : want - got);
            if (n <= 0) break;
            got += (size_t)n;
        }
        ready((volatile unsigned char *)buf, got); /* no mapping: the buffer's address, never (nil) */
        for (;;) pause();
    }
    fprintf(stderr, "bad arguments\n");
    return 2;
}
