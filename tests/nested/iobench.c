/* iobench: block I/O speed inside the L2 guest, for the disk benchmark.
 *   iobench DEVICE randread|randwrite|read|write BLOCK SECONDS
 * reads or writes BLOCK-byte blocks (O_DIRECT: the guest's page cache is
 * out of the way) at random aligned offsets or one after another for
 * SECONDS, then prints "L2: bench MODE-BLOCK ops/s=N MB/s=M". */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: iobench DEVICE randread|randwrite|read|write BLOCK SECONDS\n");
        return 2;
    }
    const char *mode = argv[2];
    long block = atol(argv[3]);
    double seconds = atof(argv[4]);
    int writing = strstr(mode, "write") != NULL;
    int random_access = strncmp(mode, "rand", 4) == 0;
    int fd = open(argv[1], (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
    unsigned long long size = 0;
    void *buffer = NULL;
    if (fd < 0 || ioctl(fd, BLKGETSIZE64, &size) != 0 || posix_memalign(&buffer, 4096, block) != 0) {
        perror("iobench");
        return 1;
    }
    memset(buffer, 0x5a, block);
    unsigned long long blocks = size / block, next = 0, done = 0;
    srandom(1);
    double start = now(), elapsed = 0;
    while (elapsed < seconds) {
        unsigned long long index = random_access ? (unsigned long long)random() % blocks : next++ % blocks;
        ssize_t moved = writing ? pwrite(fd, buffer, block, index * block)
                                : pread(fd, buffer, block, index * block);
        if (moved != block) {
            perror("iobench: I/O");
            return 1;
        }
        done++;
        if ((done & 15) == 0)
            elapsed = now() - start;
    }
    elapsed = now() - start;
    printf("L2: bench %s-%ld ops/s=%.0f MB/s=%.1f\n", mode, block, done / elapsed,
           done * (double)block / elapsed / 1e6);
    return 0;
}
