/*
 * loadclient: a compiled WebSocket load client for timefast's fan-out benchmarks.
 *
 * Opens N WebSocket connections to 127.0.0.1, subscribes each (routed mode) to
 * one of A addresses, then drives events through the node's real RPC with K
 * requests in flight on K keep-alive HTTP connections:
 *   broadcast: `generate` -> one NewBlock to every connection;
 *   routed:    `faucet(address_j, 100000 + i)` -> TransactionPending,
 *              UtxoStateChange and TransactionFinalized to address_j's subscribers.
 * It reports, as one JSON object on stdout: messages delivered per second,
 * latency from each trigger's send to each receipt (p50/p90/p99/max), connection
 * failures and its own CPU time (so a saturated client is visible).
 *
 * --slow S: the first S connections stop reading after subscribing (they are
 * left out of the expected count); --rate R paces triggers at R a second;
 * --per-conn P subscribes each connection to P addresses.
 *
 * --progress LABEL draws a progress bar on the controlling terminal (/dev/tty, so
 * that it shows through pytest's output capture; nothing when there is none).
 *
 * Only for loopback targets; bounded by --events and --timeout, stops by itself.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { WS_HANDSHAKE, WS_SUBSCRIBING, WS_READY, WS_DEAD };

typedef struct {
    int fd, state, is_rpc;
    char *buf;
    size_t len, cap;
    int busy; /* rpc: a request is outstanding */
} Conn;

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static const char *arg(int argc, char **argv, const char *name, const char *dflt) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], name)) return argv[i + 1];
    return dflt;
}

static int connect_to(const char *host, int port, int rcvbuf) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    /* A slow wallet (a phone on a poor link) has a small receive window. */
    if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void append(Conn *c, const char *p, size_t n) {
    if (c->len + n > c->cap) {
        while (c->len + n > c->cap) c->cap = c->cap ? c->cap * 2 : 65536;
        c->buf = realloc(c->buf, c->cap);
    }
    memcpy(c->buf + c->len, p, n);
    c->len += n;
}

/* Blocking-enough send for small control messages (handshakes, subscriptions). */
static int send_all(int fd, const char *p, size_t n) {
    size_t off = 0;
    while (off < n) {
        ssize_t w = send(fd, p + off, n - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) { usleep(100); continue; }
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

/* A masked client text frame. */
static int send_text(int fd, const char *payload, size_t n) {
    char frame[4096];
    if (n > sizeof frame - 8) return -1;
    size_t h = 0;
    frame[h++] = (char)0x81;
    if (n < 126) frame[h++] = (char)(0x80 | n);
    else { frame[h++] = (char)(0x80 | 126); frame[h++] = (char)(n >> 8); frame[h++] = (char)(n & 255); }
    unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(frame + h, mask, 4); h += 4;
    for (size_t i = 0; i < n; i++) frame[h + i] = payload[i] ^ mask[i & 3];
    return send_all(fd, frame, h + n);
}

static void address_of(int j, char *out) { sprintf(out, "TIME0%040x", j + 1); }

static long find_number(const char *p, size_t n, const char *key) {
    size_t k = strlen(key);
    for (size_t i = 0; i + k < n; i++) {
        if (p[i] == key[0] && !memcmp(p + i, key, k)) {
            long v = 0;
            size_t j = i + k;
            while (j < n && p[j] >= '0' && p[j] <= '9') v = v * 10 + (p[j++] - '0');
            return v;
        }
    }
    return -1;
}

/* The progress bar: redrawn at most every 0.2 s, on /dev/tty only. */
static FILE *tty;
static const char *bar_label;
static double bar_drawn;

static void progress(const char *what, double done, double total, size_t delivered,
                     double t_start, int last) {
    if (!tty) return;
    double t = now();
    if (!last && t - bar_drawn < 0.2) return;
    bar_drawn = t;
    double f = total > 0 ? done / total : 1.0;
    if (f > 1) f = 1;
    char bar[31];
    int fill = (int)(f * 30);
    for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '-';
    bar[30] = 0;
    double secs = t_start > 0 ? t - t_start : 0;
    fprintf(tty, "\r\033[K  %s [%s] %3.0f%% %.0f/%.0f %s %9.0f msgs/s %6.1fs%s", bar_label, bar,
            f * 100, done, total, what, secs > 0 ? delivered / secs : 0.0, secs, last ? "\n" : "");
    fflush(tty);
}

int main(int argc, char **argv) {
    const char *host = arg(argc, argv, "--host", "127.0.0.1");
    int ws_port = atoi(arg(argc, argv, "--ws-port", "8765"));
    int rpc_port = atoi(arg(argc, argv, "--rpc-port", "8766"));
    const char *path = arg(argc, argv, "--path", "/");
    int nconns = atoi(arg(argc, argv, "--conns", "100"));
    int naddr = atoi(arg(argc, argv, "--addresses", "100"));
    int nevents = atoi(arg(argc, argv, "--events", "100"));
    int inflight = atoi(arg(argc, argv, "--inflight", "1"));
    double timeout = atof(arg(argc, argv, "--timeout", "60"));
    int routed = !strcmp(arg(argc, argv, "--mode", "broadcast"), "routed");
    long base_height = atol(arg(argc, argv, "--base-height", "0"));
    double idle = atof(arg(argc, argv, "--idle", "0"));
    int slow = atoi(arg(argc, argv, "--slow", "0"));         /* connections that never read */
    double rate = atof(arg(argc, argv, "--rate", "0"));      /* triggers per second, 0: max */
    int per_conn = atoi(arg(argc, argv, "--per-conn", "1")); /* addresses per connection */
    if (nconns < 1 || nevents < 0 || inflight < 1 || naddr < 1) return 2;
    bar_label = arg(argc, argv, "--progress", NULL);
    if (bar_label) tty = fopen("/dev/tty", "w");

    /* Wallet sockets in `ep`, RPC sockets in `ep_rpc` (itself watched by `ep`):
       each turn reads the RPC replies first, so a trigger never waits behind
       thousands of wallet reads and "K in flight" means K at the server. */
    int ep = epoll_create1(0), ep_rpc = epoll_create1(0);
    const uint32_t RPC_MARK = 0xffffffffu;
    {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = RPC_MARK};
        epoll_ctl(ep, EPOLL_CTL_ADD, ep_rpc, &ev);
    }
    Conn *conns = calloc((size_t)nconns + (size_t)inflight, sizeof(Conn));
    int failures = 0, ready = 0;
    double deadline = now() + timeout;
    char req[1024];

    /* 1. Connect and handshake every wallet connection. */
    for (int i = 0; i < nconns; i++) {
        Conn *c = &conns[i];
        c->fd = connect_to(host, ws_port, i < slow ? 4096 : 0);
        if (c->fd < 0) { c->state = WS_DEAD; failures++; continue; }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        c->state = WS_HANDSHAKE;
    }
    /* Wait for connects to finish, then send the upgrade requests. */
    for (int i = 0; i < nconns; i++) {
        Conn *c = &conns[i];
        if (c->state == WS_DEAD) continue;
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n", path, host, ws_port);
        if (send_all(c->fd, req, (size_t)n) < 0) { c->state = WS_DEAD; failures++; close(c->fd); }
    }

    /* 2. RPC connections, one request in flight on each. */
    for (int k = 0; k < inflight; k++) {
        Conn *c = &conns[nconns + k];
        c->is_rpc = 1;
        c->fd = connect_to(host, rpc_port, 0);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(nconns + k)};
        epoll_ctl(ep_rpc, EPOLL_CTL_ADD, c->fd, &ev);
    }

    size_t expected = routed ? 0 : (size_t)nevents * (size_t)(nconns - failures - slow);
    int *subs_per_addr = calloc((size_t)naddr, sizeof(int));
    double *sent_at = calloc((size_t)nevents, sizeof(double));
    size_t lat_cap = 1 << 20, lat_n = 0;
    double *lat = malloc(lat_cap * sizeof(double));
    size_t delivered = 0;
    int triggered = 0, answered = 0;
    double t_start = 0, t_last = 0, cpu_start = 0, cpu_last = 0, cpu_at = 0;
    struct epoll_event evs[512];

    while (now() < deadline) {
        /* Start triggering once every live connection is ready. */
        if (ready == nconns - failures && t_start == 0) {
            t_start = now();
            cpu_start = cpu_seconds();
            if (nevents > 0) {
                /* Tells the harness the timed part starts (it samples the server's CPU). */
                printf("{\"timed\":true}\n");
                fflush(stdout);
            }
            if (nevents == 0) {
                /* Idle mode: hold the connections open for a memory reading. */
                printf("{\"ready\":%d,\"conn_failures\":%d}\n", ready, failures);
                fflush(stdout);
                double until = now() + idle;
                while (now() < until) {
                    int k = epoll_wait(ep, evs, 512, 100);
                    for (int e = 0; e < k; e++) {
                        Conn *c = &conns[evs[e].data.u32];
                        char tmp[4096];
                        if (recv(c->fd, tmp, sizeof tmp, 0) == 0) { failures++; epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); }
                    }
                }
                break;
            }
        }
        if (t_start > 0) {
            for (int k = 0; k < inflight && triggered < nevents; k++) {
                Conn *c = &conns[nconns + k];
                if (c->busy) continue;
                if (rate > 0 && now() < t_start + triggered / rate) break;
                char body[256];
                int bl;
                if (routed) {
                    char a[64];
                    int j = triggered % naddr;
                    address_of(j, a);
                    bl = snprintf(body, sizeof body,
                                  "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"faucet\",\"params\":[\"%s\",%d]}",
                                  triggered, a, 100000 + triggered);
                    expected += (size_t)subs_per_addr[j] * 3;
                } else {
                    bl = snprintf(body, sizeof body,
                                  "{\"jsonrpc\":\"2.0\",\"id\":%d,\"method\":\"generate\",\"params\":[1]}",
                                  triggered);
                }
                int n = snprintf(req, sizeof req,
                                 "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                 "Content-Length: %d\r\n\r\n%s", bl, body);
                sent_at[triggered] = now();
                if (send_all(c->fd, req, (size_t)n) < 0) { failures++; break; }
                c->busy = 1;
                triggered++;
            }
            if (triggered == nevents && answered == nevents && delivered >= expected) break;
        }
        if (t_start == 0)
            progress("connected", ready, nconns - failures, 0, 0, 0);
        else if (routed)  /* expected grows as triggers go out: count answered triggers */
            progress("events", answered, nevents, delivered, t_start, 0);
        else
            progress("delivered", (double)delivered, (double)expected, delivered, t_start, 0);
        int n = epoll_wait(ep_rpc, evs, 64, 0);
        n += epoll_wait(ep, evs + n, 64, n ? 0 : 50);
        for (int e = 0; e < n; e++) {
            if (evs[e].data.u32 == RPC_MARK) continue; /* read at the next turn's start */
            Conn *c = &conns[evs[e].data.u32];
            char tmp[262144];
            for (;;) {
                ssize_t r = recv(c->fd, tmp, sizeof tmp, 0);
                if (r > 0) { append(c, tmp, (size_t)r); if ((size_t)r < sizeof tmp) break; continue; }
                if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    if (c->state != WS_DEAD) { failures++; c->state = WS_DEAD; }
                    epoll_ctl(c->is_rpc ? ep_rpc : ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                }
                break;
            }
            if (c->state == WS_DEAD) continue;
            double t = now();
            if (c->is_rpc) {
                /* HTTP responses: header, Content-Length, body. */
                for (;;) {
                    char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
                    if (!end) break;
                    long cl = find_number(c->buf, (size_t)(end - c->buf), "Content-Length: ");
                    size_t total = (size_t)(end - c->buf) + 4 + (size_t)(cl < 0 ? 0 : cl);
                    if (c->len < total) break;
                    memmove(c->buf, c->buf + total, c->len - total);
                    c->len -= total;
                    c->busy = 0;
                    answered++;
                }
                continue;
            }
            size_t off = 0;
            if (c->state == WS_HANDSHAKE) {
                char *end = memmem(c->buf, c->len, "\r\n\r\n", 4);
                if (!end) continue;
                if (c->len < 12 || memcmp(c->buf + 9, "101", 3)) {
                    failures++; c->state = WS_DEAD; close(c->fd); continue;
                }
                off = (size_t)(end - c->buf) + 4;
                int idx = (int)(c - conns);
                if (routed) {
                    char msg[3000];
                    int ml = snprintf(msg, sizeof msg, "{\"type\":\"Subscribe\",\"data\":{\"snapshot\":false,\"addresses\":[");
                    for (int q = 0; q < per_conn && q < 48; q++) {
                        char a[64];
                        int j = (idx * per_conn + q) % naddr;
                        address_of(j, a);
                        ml += snprintf(msg + ml, sizeof msg - (size_t)ml, "%s\"%s\"", q ? "," : "", a);
                        if (idx >= slow) subs_per_addr[j]++;
                    }
                    ml += snprintf(msg + ml, sizeof msg - (size_t)ml, "]}}");
                    send_text(c->fd, msg, (size_t)ml);
                    c->state = WS_SUBSCRIBING;
                } else {
                    /* NewBlock reaches a connection from its first message on. */
                    send_text(c->fd, "{\"type\":\"Ping\"}", 15);
                    c->state = WS_SUBSCRIBING;
                }
            }
            /* Frames from the server are unmasked. */
            while (c->len - off >= 2) {
                unsigned char *p = (unsigned char *)c->buf + off;
                size_t plen = p[1] & 0x7f, h = 2;
                if (plen == 126) { if (c->len - off < 4) break; plen = ((size_t)p[2] << 8) | p[3]; h = 4; }
                else if (plen == 127) {
                    if (c->len - off < 10) break;
                    plen = 0;
                    for (int b = 0; b < 8; b++) plen = (plen << 8) | p[2 + b];
                    h = 10;
                }
                if (c->len - off < h + plen) break;
                int op = p[0] & 0x0f;
                const char *pl = (const char *)p + h;
                if (op == 1) {
                    if (c->state == WS_SUBSCRIBING) {
                        if ((plen > 20 && memmem(pl, plen, "\"Subscribed\"", 12)) ||
                            (plen >= 15 && memmem(pl, plen, "\"Pong\"", 6))) {
                            c->state = WS_READY; ready++;
                            if ((int)(c - conns) < slow) epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                        }
                    } else {
                        long id = -1;
                        if (!routed) {
                            long hgt = find_number(pl, plen, "\"height\":");
                            if (hgt > 0) id = hgt - base_height - 1;
                        } else {
                            long amt = find_number(pl, plen, "\"amount\":");
                            if (amt >= 100000) id = amt - 100000;
                        }
                        delivered++;
                        if (t - cpu_at > 0.01) { cpu_last = cpu_seconds(); cpu_at = t; }
                        t_last = t;
                        if (id >= 0 && id < triggered) {
                            if (lat_n == lat_cap) { lat_cap *= 2; lat = realloc(lat, lat_cap * sizeof(double)); }
                            lat[lat_n++] = t - sent_at[id];
                        }
                    }
                } else if (op == 9) { /* ping: answer with a masked pong */
                    char pong[6] = {(char)0x8a, (char)0x80, 0, 0, 0, 0};
                    send_all(c->fd, pong, 6);
                } else if (op == 8) {
                    failures++; c->state = WS_DEAD; close(c->fd); break;
                }
                off += h + plen;
            }
            if (off) { memmove(c->buf, c->buf + off, c->len - off); c->len -= off; }
        }
    }
    if (routed)
        progress("events", answered, nevents, delivered, t_start, 1);
    else
        progress("delivered", (double)delivered, (double)expected, delivered, t_start, 1);
    if (tty) fclose(tty);
    double cpu = cpu_seconds();
    double secs = (t_last > t_start && t_start > 0) ? t_last - t_start : 0;
    /* CPU spent while events flowed (sampled at most every 10 ms, so it can trail
       t_last slightly): near `seconds` means the client, not the server, is the
       limit. */
    double cpu_timed = cpu_last > cpu_start ? cpu_last - cpu_start : 0;
    qsort(lat, lat_n, sizeof(double), cmp_double);
#define PCT(q) (lat_n ? lat[(size_t)((lat_n - 1) * (q))] * 1e3 : 0.0)
    printf("{\"connections\":%d,\"ready\":%d,\"events\":%d,\"answered\":%d,\"expected\":%zu,"
           "\"delivered\":%zu,\"seconds\":%.6f,\"msgs_per_s\":%.1f,\"p50_ms\":%.3f,"
           "\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,\"conn_failures\":%d,"
           "\"client_cpu_s\":%.3f,\"client_cpu_timed_s\":%.3f,\"complete\":%s}\n",
           nconns, ready, triggered, answered, expected, delivered, secs,
           secs > 0 ? delivered / secs : 0.0, PCT(0.5), PCT(0.9), PCT(0.99), PCT(1.0), failures, cpu,
           cpu_timed,
           (delivered >= expected && answered == nevents) ? "true" : "false");
    return 0;
}
