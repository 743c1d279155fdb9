/* stamp: runs a VMM in L1 and times what it prints, for the boot benchmark.
 *   stamp COMMAND [ARG...]
 * prints "stamp: start=T" (CLOCK_MONOTONIC, seconds), then each line the
 * command writes as "SECONDS-SINCE-START | LINE" (its stdout) or
 * "SECONDS-SINCE-START ! LINE" (its stderr), then
 * "stamp: exit-after=SECONDS status=N". It blocks in poll, so timing costs
 * L1 no polling loop (L1 is emulated: one would steal time from the guest
 * it measures). The command's stdin is stamp's. */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double start;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* One stream's partial line, printed with its mark once it is whole. */
struct stream {
    int fd;
    char mark;
    char line[8192];
    size_t used;
};

static void flush_line(struct stream *s)
{
    printf("%.3f %c %.*s\n", now() - start, s->mark, (int)s->used, s->line);
    s->used = 0;
}

/* Reads what is there; returns 0 at end of stream. */
static int take(struct stream *s)
{
    char buffer[4096];
    ssize_t got = read(s->fd, buffer, sizeof buffer);
    if (got <= 0) {
        if (s->used)
            flush_line(s);
        return 0;
    }
    for (ssize_t i = 0; i < got; i++) {
        if (buffer[i] == '\n' || s->used == sizeof s->line)
            flush_line(s);
        if (buffer[i] != '\n')
            s->line[s->used++] = buffer[i];
    }
    fflush(stdout);
    return 1;
}

int main(int argc, char **argv)
{
    int out[2], err[2];
    if (argc < 2) {
        fprintf(stderr, "usage: stamp COMMAND [ARG...]\n");
        return 2;
    }
    if (pipe(out) != 0 || pipe(err) != 0) {
        perror("stamp: pipe");
        return 1;
    }
    start = now();
    printf("stamp: start=%.6f\n", start);
    fflush(stdout);
    pid_t child = fork();
    if (child < 0) {
        perror("stamp: fork");
        return 1;
    }
    if (child == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        close(out[0]); close(out[1]); close(err[0]); close(err[1]);
        execvp(argv[1], argv + 1);
        perror("stamp: exec");
        _exit(127);
    }
    close(out[1]);
    close(err[1]);
    struct stream streams[2] = {{.fd = out[0], .mark = '|'}, {.fd = err[0], .mark = '!'}};
    struct pollfd watched[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
    int open_streams = 2;
    while (open_streams > 0) {
        if (poll(watched, 2, -1) < 0)
            continue;
        for (int i = 0; i < 2; i++) {
            if (watched[i].fd >= 0 && watched[i].revents && !take(&streams[i])) {
                watched[i].fd = -1;
                open_streams--;
            }
        }
    }
    int status = 0;
    waitpid(child, &status, 0);
    printf("stamp: exit-after=%.3f status=%d\n", now() - start,
           WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    return 0;
}
