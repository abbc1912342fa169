/*
 * baseline_server: the machine's limit for this protocol, as a bare C epoll server.
 *
 * Speaks the wallet protocol the benchmark uses (Subscribe -> Subscribed, Ping ->
 * Pong) and a minimal RPC (`generate`, `faucet`, `getblockcount`).  Each event's
 * frame is built once, appended to every target's output buffer, and every dirty
 * buffer is flushed with one send() per loop turn.  No ledger: `faucet` only sends
 * the three messages a payment would, with the node's shapes and sizes.
 *
 *     baseline_server WS_PORT RPC_PORT      (127.0.0.1 only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- SHA-1 and base64, for Sec-WebSocket-Accept ---------------------------- */
static uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *m = calloc(total, 1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 |
                   (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

static void base64(const unsigned char *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- connections ------------------------------------------------------------ */
typedef struct { char *p; size_t len, cap; } Buf;
typedef struct {
    int fd, is_rpc, open, live, dirty;
    Buf in, out;
} Conn;

#define MAXFD 65536
static Conn *conns[MAXFD];
static int dirty[MAXFD], ndirty;
static int ep;

static void buf_add(Buf *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        while (b->len + n > b->cap) b->cap = b->cap ? b->cap * 2 : 4096;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void queue(Conn *c, const void *p, size_t n) {
    buf_add(&c->out, p, n);
    if (!c->dirty) { c->dirty = 1; dirty[ndirty++] = c->fd; }
}

static size_t frame(char *dst, const char *payload, size_t n) {
    size_t h = 0;
    dst[h++] = (char)0x81;
    if (n < 126) dst[h++] = (char)n;
    else { dst[h++] = 126; dst[h++] = (char)(n >> 8); dst[h++] = (char)(n & 255); }
    memcpy(dst + h, payload, n);
    return h + n;
}

static void drop(Conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    c->open = 0;
    free(c->in.p);
    free(c->out.p);
    if (!c->dirty) free(c);
    else c->fd = -1; /* freed by the flush that skips it */
}

/* ---- address index: open hashing, address -> list of fds ------------------- */
typedef struct { char addr[64]; int *fds; int n, cap; } Entry;
#define NBUCKET 131072
static Entry *table[NBUCKET];

static Entry *lookup(const char *a, int create) {
    uint32_t h = 2166136261u;
    for (const char *p = a; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    for (uint32_t i = h % NBUCKET;; i = (i + 1) % NBUCKET) {
        if (!table[i]) {
            if (!create) return NULL;
            table[i] = calloc(1, sizeof(Entry));
            strncpy(table[i]->addr, a, 63);
            return table[i];
        }
        if (!strcmp(table[i]->addr, a)) return table[i];
    }
}

static long height;
static long seqno;

static void broadcast_block(void) {
    char json[512], fr[600];
    height++;
    int n = snprintf(json, sizeof json,
                     "{\"type\":\"NewBlock\",\"data\":{\"height\":%ld,\"hash\":\"%064ld\","
                     "\"prev_hash\":\"%064ld\",\"timestamp\":1795691345,\"tx_count\":0,\"seq\":%ld}}",
                     height, height, height - 1, ++seqno);
    size_t fl = frame(fr, json, (size_t)n);
    for (int fd = 0; fd < MAXFD; fd++)
        if (conns[fd] && conns[fd]->open && conns[fd]->live && !conns[fd]->is_rpc)
            queue(conns[fd], fr, fl);
}

static void payment(const char *addr, long amount) {
    Entry *e = lookup(addr, 0);
    if (!e) return;
    char tx[700], json[1500], fr[1600];
    snprintf(tx, sizeof tx,
             "{\"txid\":\"%064ld\",\"version\":1,\"inputs\":[{\"previous_output\":{\"txid\":\"%064ld\","
             "\"vout\":0},\"public_key\":\"%064d\",\"signature\":\"%0128d\",\"sequence\":4294967295}],"
             "\"outputs\":[{\"amount\":%ld,\"address\":\"%s\"}],\"lock_time\":0,\"timestamp\":1795691345}",
             amount, amount, 0, 0, amount, addr);
    const char *fmt[3] = {
        "{\"type\":\"TransactionPending\",\"data\":{\"tx\":%s,\"seq\":%ld}}",
        "{\"type\":\"UtxoStateChange\",\"data\":{\"outpoint\":{\"txid\":\"x\",\"vout\":0},\"address\":\"%s\","
        "\"amount\":%ld,\"state\":\"Unspent\",\"prev_state\":null,\"transaction\":%s,\"seq\":%ld}}",
        "{\"type\":\"TransactionFinalized\",\"data\":{\"txid\":\"%064ld\",\"block_height\":null,"
        "\"votes\":1,\"quorum\":1,\"seq\":%ld}}"};
    for (int k = 0; k < 3; k++) {
        int n;
        if (k == 0) n = snprintf(json, sizeof json, fmt[0], tx, ++seqno);
        else if (k == 1) n = snprintf(json, sizeof json, fmt[1], addr, amount, tx, ++seqno);
        else n = snprintf(json, sizeof json, fmt[2], amount, ++seqno);
        size_t fl = frame(fr, json, (size_t)n);
        for (int i = 0; i < e->n; i++)
            if (conns[e->fds[i]] && conns[e->fds[i]]->open) queue(conns[e->fds[i]], fr, fl);
    }
}

static void on_ws(Conn *c) {
    if (!c->live && !c->open) return;
    size_t off = 0;
    if (c->open == 1) { /* handshake */
        char *end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
        if (!end) return;
        char *k = memmem(c->in.p, (size_t)(end - c->in.p), "Sec-WebSocket-Key: ", 19);
        if (!k) { drop(c); return; }
        k += 19;
        char key[128];
        int kl = 0;
        while (k[kl] != '\r' && kl < 60) { key[kl] = k[kl]; kl++; }
        memcpy(key + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
        unsigned char dig[20];
        sha1((unsigned char *)key, (size_t)kl + 36, dig);
        char acc[64], resp[256];
        base64(dig, 20, acc);
        int n = snprintf(resp, sizeof resp,
                         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", acc);
        queue(c, resp, (size_t)n);
        c->open = 2;
        off = (size_t)(end - c->in.p) + 4;
    }
    while (c->in.len - off >= 6) {
        unsigned char *p = (unsigned char *)c->in.p + off;
        size_t n = p[1] & 0x7f, h = 2;
        if (n == 126) { n = (size_t)p[2] << 8 | p[3]; h = 4; }
        if (c->in.len - off < h + 4 + n) break;
        unsigned char *mask = p + h, *pl = p + h + 4;
        for (size_t i = 0; i < n; i++) pl[i] ^= mask[i & 3];
        int op = p[0] & 15;
        off += h + 4 + n;
        if (op == 8) { drop(c); return; }
        if (op != 1) continue;
        char fr[2048];
        c->live = 1;
        if (memmem(pl, n, "\"Subscribe\"", 11)) {
            char *q = (char *)pl, *qend = (char *)pl + n;
            while ((q = memmem(q, (size_t)(qend - q), "\"TIME", 5))) {
                char a[64];
                int al = 0;
                q++;
                while (q < qend && *q != '"' && al < 63) a[al++] = *q++;
                a[al] = 0;
                Entry *e = lookup(a, 1);
                if (e->n == e->cap) { e->cap = e->cap ? e->cap * 2 : 4; e->fds = realloc(e->fds, sizeof(int) * (size_t)e->cap); }
                e->fds[e->n++] = c->fd;
            }
            const char *s = "{\"type\":\"Subscribed\",\"data\":{\"addresses\":[],\"seq\":0}}";
            queue(c, fr, frame(fr, s, strlen(s)));
        } else if (memmem(pl, n, "\"Ping\"", 6)) {
            queue(c, fr, frame(fr, "{\"type\":\"Pong\"}", 15));
        }
    }
    if (conns[c->fd] == c && off) { memmove(c->in.p, c->in.p + off, c->in.len - off); c->in.len -= off; }
}

static void on_rpc(Conn *c) {
    for (;;) {
        char *end = memmem(c->in.p, c->in.len, "\r\n\r\n", 4);
        if (!end) return;
        char *cl = memmem(c->in.p, (size_t)(end - c->in.p), "Content-Length: ", 16);
        size_t blen = cl ? (size_t)atol(cl + 16) : 0, head = (size_t)(end - c->in.p) + 4;
        if (c->in.len < head + blen) return;
        char body[1024];
        size_t bl = blen < 1023 ? blen : 1023;
        memcpy(body, c->in.p + head, bl);
        body[bl] = 0;
        char result[128] = "0";
        if (strstr(body, "\"generate\"")) { broadcast_block(); snprintf(result, sizeof result, "[\"%ld\"]", height); }
        else if (strstr(body, "\"faucet\"")) {
            char *a = strstr(body, "\"TIME");
            char addr[64] = "";
            int al = 0;
            if (a) { a++; while (*a && *a != '"' && al < 63) addr[al++] = *a++; addr[al] = 0; }
            long amount = a ? atol(strchr(a, ',') + 1) : 0;
            payment(addr, amount);
            strcpy(result, "\"x\"");
        } else snprintf(result, sizeof result, "%ld", height);
        char out[512];
        char js[256];
        int jl = snprintf(js, sizeof js, "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":%s}", result);
        int n = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         "Content-Length: %d\r\n\r\n%s", jl, js);
        queue(c, out, (size_t)n);
        memmove(c->in.p, c->in.p + head + blen, c->in.len - head - blen);
        c->in.len -= head + blen;
    }
}

static void flush_all(void) {
    for (int i = 0; i < ndirty; i++) {
        Conn *c = conns[dirty[i]];
        if (!c || !c->dirty) continue;
        c->dirty = 0;
        size_t off = 0;
        while (off < c->out.len) {
            ssize_t w = send(c->fd, c->out.p + off, c->out.len - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w <= 0) break;
            off += (size_t)w;
        }
        memmove(c->out.p, c->out.p + off, c->out.len - off);
        c->out.len -= off;
        if (c->out.len) { /* keep it for the next turn */
            c->dirty = 1;
            dirty[ndirty++] = c->fd;
            if (ndirty >= MAXFD - 1) break;
        }
    }
    int keep = 0;
    for (int i = 0; i < ndirty; i++) if (conns[dirty[i]] && conns[dirty[i]]->dirty) dirty[keep++] = dirty[i];
    ndirty = keep;
}

static int listen_on(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) { perror("listen"); exit(1); }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int lws = listen_on(atoi(argv[1])), lrpc = listen_on(atoi(argv[2]));
    ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lws};
    epoll_ctl(ep, EPOLL_CTL_ADD, lws, &ev);
    ev.data.fd = lrpc;
    epoll_ctl(ep, EPOLL_CTL_ADD, lrpc, &ev);
    printf("ready\n");
    fflush(stdout);
    struct epoll_event evs[1024];
    char tmp[65536];
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, ndirty ? 0 : 1000);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lws || fd == lrpc) {
                int cfd;
                while ((cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (cfd >= MAXFD) { close(cfd); continue; }
                    int one = 1;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    Conn *c = calloc(1, sizeof(Conn));
                    c->fd = cfd;
                    c->is_rpc = fd == lrpc;
                    c->open = 1;
                    conns[cfd] = c;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &e2);
                }
                continue;
            }
            Conn *c = conns[fd];
            if (!c) continue;
            ssize_t r = recv(fd, tmp, sizeof tmp, 0);
            if (r <= 0) { if (r == 0 || errno != EAGAIN) drop(c); continue; }
            buf_add(&c->in, tmp, (size_t)r);
            if (c->is_rpc) on_rpc(c); else on_ws(c);
        }
        flush_all();
    }
}
