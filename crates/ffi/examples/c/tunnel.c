/*
 * A C program driving a WireGuard tunnel through libwireguard_rs (include/wireguard_rs.h):
 * the example of the README's "Embedding" section and the subject of the end-to-end test
 * tests/e2e/tests/ffi.rs, which runs it in a network namespace (also under valgrind).
 *
 *   cc -std=c11 -Wall -Wextra -Werror -I crates/ffi/include crates/ffi/examples/c/tunnel.c \
 *      target/debug/libwireguard_rs.a -lpthread -ldl -lm -o tunnel
 *   ./tunnel IFNAME          (root: creates the TUN interface IFNAME)
 *
 * It opens a TUN interface (ioctl TUNSETIFF on /dev/net/tun), reads the settings (UAPI
 * `set` lines, as wgTurnOn takes them) from stdin up to a line ".", turns the tunnel on and
 * answers "up HANDLE". Then it serves one command per stdin line, each answered by one
 * stdout line ("... ok" or "... FAIL reason"):
 *
 *   set        settings lines up to "." for wgSetConfig   -> "set CODE"
 *   has LINE   whether wgGetConfig holds the line LINE    -> "has yes" | "has no"
 *   bump       wgBumpSockets, new socket descriptors      -> "bump ok V4 V6"
 *   bad        NULL, garbage, unknown handles...          -> "bad ok"
 *   off        wgTurnOff, then use after turn-off         -> "off ok"
 *
 * and exits 0 at the end of stdin (1 if any check failed). Settings come on stdin, not
 * the command line: they hold the private key. The settings buffer is wiped after use,
 * as the library expects of its callers.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wireguard_rs.h"

/* What the logger callback sees; freed once the logger is replaced (valgrind would report
 * a later use). */
struct log_ctx {
    atomic_int lines;
    atomic_int errors;
    /* wgSetLogger's answer when called from inside the callback (once). */
    atomic_int reentry;
};

static void logger(void *context, int32_t level, const char *msg)
{
    struct log_ctx *ctx = context;
    if (atomic_fetch_add(&ctx->lines, 1) == 0) {
        /* The library refuses to wait for itself. */
        atomic_store(&ctx->reentry, wgSetLogger(context, logger));
    }
    if (level == WG_LOG_ERROR) {
        atomic_fetch_add(&ctx->errors, 1);
    }
    fprintf(stderr, "[wireguard-rs %s] %s\n", level == WG_LOG_ERROR ? "E" : "V", msg);
}

static int failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " (last error: %s)\n", wgLastError());                         \
            failures++;                                                                    \
        }                                                                                  \
    } while (0)

/* Reads lines up to "." into a malloc'd string (NULL at the end of input). */
static char *read_block(void)
{
    size_t cap = 4096, len = 0;
    char *text = calloc(1, cap);
    char line[1024];
    if (text == NULL) {
        return NULL;
    }
    while (fgets(line, sizeof line, stdin) != NULL) {
        if (strcmp(line, ".\n") == 0) {
            return text;
        }
        size_t n = strlen(line);
        if (len + n + 1 > cap) {
            fprintf(stderr, "settings too long\n");
            break;
        }
        memcpy(text + len, line, n + 1);
        len += n;
    }
    free(text);
    return NULL;
}

/* Wipes and frees a settings buffer (they hold private keys). */
static void wipe(char *text)
{
    if (text != NULL) {
        explicit_bzero(text, strlen(text));
        free(text);
    }
}

static int open_tun(const char *name)
{
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        perror("open /dev/net/tun");
        return -1;
    }
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        perror("ioctl TUNSETIFF");
        close(fd);
        return -1;
    }
    return fd;
}

/* A descriptor to hand to wgTurnOn in the refusal checks: one end of a datagram pair. */
static int spare_fd(int *peer)
{
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, pair) < 0) {
        perror("socketpair");
        exit(1);
    }
    *peer = pair[1];
    return pair[0];
}

static int is_closed(int fd)
{
    return fcntl(fd, F_GETFD) < 0 && errno == EBADF;
}

/* wgTurnOn refuses `settings` with `expected` (negative) and closes the descriptor. */
static void turn_on_refused(const char *settings, int framing, int32_t expected, const char *what)
{
    int peer;
    int fd = spare_fd(&peer);
    int32_t r = framing < 0 ? wgTurnOn(settings, fd) : wgTurnOnWithFraming(settings, fd, framing);
    CHECK(r == expected, "%s: wgTurnOn returned %d, expected %d", what, r, expected);
    CHECK(strlen(wgLastError()) > 0, "%s: no error message", what);
    CHECK(is_closed(fd), "%s: the descriptor was not closed on error", what);
    if (!is_closed(fd)) {
        close(fd);
    }
    close(peer);
}

static void *other_thread(void *arg)
{
    (void)arg;
    /* The last error is per thread: nothing failed on this one. */
    return (void *)(uintptr_t)(strlen(wgLastError()) == 0);
}

/* Unknown handles are refused by every function, never undefined behaviour. */
static void unknown_handle(int32_t h)
{
    CHECK(wgSetConfig(h, "listen_port=0\n") == -WG_EBADF, "set on handle %d", h);
    CHECK(wgGetConfig(h) == NULL, "get on handle %d", h);
    CHECK(strstr(wgLastError(), "handle") != NULL, "message for handle %d: %s", h, wgLastError());
    CHECK(wgBumpSockets(h) == -WG_EBADF, "bump on handle %d", h);
    CHECK(wgGetSocketV4(h) == -1, "socket v4 of handle %d", h);
    CHECK(wgGetSocketV6(h) == -1, "socket v6 of handle %d", h);
    CHECK(wgDisableSomeRoamingForBrokenMobileSemantics(h) == -WG_EBADF, "roaming on handle %d", h);
    CHECK(wgTurnOff(h) == -WG_EBADF, "turn off handle %d", h);
}

static void bad_input(int32_t handle)
{
    turn_on_refused(NULL, -1, -WG_EINVAL, "NULL settings");
    turn_on_refused("this is not a settings line\n", -1, -WG_EPROTO, "garbage settings");
    turn_on_refused("private_key=zz\n", -1, -WG_EINVAL, "bad key");
    turn_on_refused("listen_port=\xff\xfe\n", -1, -WG_EINVAL, "invalid UTF-8");
    turn_on_refused("listen_port=0\n", 7, -WG_EINVAL, "unknown framing");
    CHECK(wgTurnOn("listen_port=0\n", -1) == -WG_EBADF, "negative tun_fd");

    char *before = wgGetConfig(handle);
    CHECK(before != NULL, "get before the refused sets");
    CHECK(wgSetConfig(handle, NULL) == -WG_EINVAL, "wgSetConfig(NULL)");
    CHECK(wgSetConfig(handle, "nonsense\n") == -WG_EPROTO, "wgSetConfig(garbage)");
    CHECK(strlen(wgLastError()) > 0, "no message for the refused set");
    CHECK(wgSetConfig(handle, "listen_port=1\nprivate_key=00\n") == -WG_EINVAL,
          "wgSetConfig(bad key)");
    /* All or nothing: the port of the refused set was not applied. */
    char *after = wgGetConfig(handle);
    CHECK(after != NULL && strstr(after, "listen_port=1\n") == NULL, "refused set applied");
    CHECK(before != NULL && after != NULL &&
              strncmp(before, after, strcspn(before, "\n")) == 0,
          "first line changed by refused sets");
    wgFreeString(before);
    wgFreeString(after);
    wgFreeString(NULL);

    unknown_handle(123456);
    unknown_handle(-5);

    pthread_t t;
    void *clean = NULL;
    CHECK(pthread_create(&t, NULL, other_thread, NULL) == 0, "pthread_create");
    pthread_join(t, &clean);
    CHECK(clean == (void *)1, "the last error leaked to another thread");
}

static int has_line(int32_t handle, const char *line)
{
    char *config = wgGetConfig(handle);
    if (config == NULL) {
        return 0;
    }
    size_t n = strlen(line);
    int found = 0;
    for (const char *p = config; *p != '\0'; p = strchr(p, '\n') + 1) {
        if (strncmp(p, line, n) == 0 && p[n] == '\n') {
            found = 1;
        }
        if (strchr(p, '\n') == NULL) {
            break;
        }
    }
    wgFreeString(config);
    return found;
}

int main(int argc, char **argv)
{
    char command[1024];
    if (argc != 2) {
        fprintf(stderr, "usage: %s IFNAME  (settings on stdin up to a line \".\")\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    fprintf(stderr, "libwireguard_rs %s\n", wgVersion());

    struct log_ctx *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL || wgSetLogger(ctx, logger) != 0) {
        fprintf(stderr, "wgSetLogger: %s\n", wgLastError());
        return 1;
    }

    char *settings = read_block();
    int tun = open_tun(argv[1]);
    if (settings == NULL || tun < 0) {
        fprintf(stderr, "no settings or no TUN\n");
        return 1;
    }
    int32_t handle = wgTurnOn(settings, tun); /* raw framing on Linux; tun is the library's */
    wipe(settings);
    if (handle < 0) {
        fprintf(stderr, "wgTurnOn: %d: %s\n", handle, wgLastError());
        return 1;
    }
    CHECK(wgGetSocketV4(handle) >= 0, "no IPv4 socket");
    CHECK(wgDisableSomeRoamingForBrokenMobileSemantics(handle) == 0, "roaming off");
    printf("up %d\n", handle);

    int off = 0;
    while (fgets(command, sizeof command, stdin) != NULL) {
        command[strcspn(command, "\n")] = '\0';
        int before = failures;
        if (strcmp(command, "set") == 0) {
            char *text = read_block();
            int64_t r = text != NULL ? wgSetConfig(handle, text) : -WG_EINVAL;
            wipe(text);
            printf("set %lld\n", (long long)r);
        } else if (strncmp(command, "has ", 4) == 0) {
            printf("has %s\n", has_line(handle, command + 4) ? "yes" : "no");
        } else if (strcmp(command, "bump") == 0) {
            int v4 = wgGetSocketV4(handle);
            CHECK(wgBumpSockets(handle) == 0, "bump");
            int v4_new = wgGetSocketV4(handle);
            CHECK(v4_new >= 0 && v4_new != v4, "bump kept socket %d (now %d)", v4, v4_new);
            printf("bump %s %d %d\n", failures == before ? "ok" : "FAIL", v4_new,
                   wgGetSocketV6(handle));
        } else if (strcmp(command, "bad") == 0) {
            bad_input(handle);
            printf("bad %s\n", failures == before ? "ok" : "FAIL");
        } else if (strcmp(command, "off") == 0) {
            CHECK(wgTurnOff(handle) == 0, "turn off");
            off = 1;
            CHECK(wgTurnOff(handle) == -WG_EBADF, "second turn off");
            unknown_handle(handle); /* use after turn-off */
            CHECK(atomic_load(&ctx->lines) > 0, "no log line");
            CHECK(atomic_load(&ctx->reentry) == -WG_EDEADLK,
                  "wgSetLogger from the callback returned %d", atomic_load(&ctx->reentry));
            /* Once wgSetLogger returns, the old callback is never called again: its
             * context is freed, and valgrind reports any later use. */
            CHECK(wgSetLogger(NULL, NULL) == 0, "remove the logger");
            free(ctx);
            ctx = NULL;
            int peer;
            int fd = spare_fd(&peer);
            int32_t quiet = wgTurnOn("listen_port=0\n", fd);
            CHECK(quiet >= 0, "a tunnel without logger");
            CHECK(wgTurnOff(quiet) == 0, "turn off the tunnel without logger");
            close(peer);
            printf("off %s\n", failures == before ? "ok" : "FAIL");
        } else {
            fprintf(stderr, "unknown command %s\n", command);
            failures++;
        }
    }
    if (!off) {
        wgTurnOff(handle);
    }
    if (ctx != NULL) {
        wgSetLogger(NULL, NULL);
        free(ctx);
    }
    fprintf(stderr, "%d failure(s)\n", failures);
    return failures == 0 ? 0 : 1;
}
