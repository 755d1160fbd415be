/* pfi-workload: steady swap-in major page faults, for a process inside a memory cgroup whose limit
 * is smaller than what it touches.
 *
 * usage: swap_faults SIZE_MB [anon|shmem] [--no-wait]
 *
 * anon:  a private anonymous mapping (what the engine reports as kind "swap").
 * shmem: a memfd (tmpfs) shared mapping (kind "shmem": tmpfs pages coming back from swap).
 *
 * Waits for one line on stdin before allocating anything, so the caller can put it into its
 * cgroup first (unless --no-wait). Then touches every page once (write, so each page is real
 * memory), prints
 *   ready pid=1234 start=0x7f0000000000 end=0x7f0008000000 pages=32768 page_size=4096 kind=anon
 * and loops forever writing one byte of every page in a scattered order: with the cgroup limit at
 * half the size, most touches find the page swapped out and fault it back in from swap.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SIZE_MB [anon|shmem] [--no-wait]\n", argv[0]);
        return 2;
    }
    size_t size = (size_t)atol(argv[1]) << 20;
    int shmem = argc > 2 && strcmp(argv[2], "shmem") == 0;
    int wait = !(argc > 3 && strcmp(argv[3], "--no-wait") == 0);
    prctl(PR_SET_NAME, "pfi-workload", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0);

    if (wait) {
        char line[64];
        if (!fgets(line, sizeof line, stdin)) return 1;
    }
    long page = sysconf(_SC_PAGESIZE);
    size_t pages = size / page;
    volatile unsigned char *m;
    if (shmem) {
        int fd = memfd_create("pfi-workload-shmem", 0);
        if (fd < 0 || ftruncate(fd, (off_t)size) < 0) { perror("memfd"); return 1; }
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } else {
        m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    madvise((void *)m, size, MADV_NOHUGEPAGE); /* 4 KiB pages: one swap-in = one fault */
    madvise((void *)m, size, MADV_RANDOM);     /* no swap read-ahead either */
    for (size_t i = 0; i < pages; i++) m[i * page] = (unsigned char)i | 1;
    printf("ready pid=%d start=%p end=%p pages=%zu page_size=%ld kind=%s\n", getpid(), (void *)m,
           (void *)(m + size), pages, page, shmem ? "shmem" : "anon");
    fflush(stdout);

    /* Visit pages in a scattered order (a stride coprime to the page count). */
    size_t stride = 7919;
    while (pages % stride == 0) stride += 2;
    size_t idx = 0;
    for (unsigned long n = 0;; n++) {
        idx = (idx + stride) % pages;
        m[idx * page] += 1;
    }
}
