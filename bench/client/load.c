/*
 * Load client for bench/run: one thread, one epoll loop, pinned by the runner to its own CPU.
 *
 *   load mode=echo|handshake|idle|hold|fanout proto=native|sio check=as-is|yektaws port=P
 *        [path=/ws] [conns=N] [warmup=S] [duration=S] [count=N] [concurrency=N] [tokens=FILE]
 *        [source=ADDR] [open_seconds=S]
 *
 * It speaks RFC 6455 itself, and Socket.IO 5 / Engine.IO 4 over it, because a Node client spends
 * as much CPU per message as the fastest servers here and would measure itself instead of them.
 *
 * Modes:
 *   echo       open `conns` connections, then run a closed loop on each (the next message leaves
 *              when the previous reply arrived) for `warmup` + `duration` seconds; latencies and
 *              the message count come from the `duration` window only.
 *   handshake  `count` connects with `concurrency` in flight; each counts when the server says the
 *              connection is ready, and is then closed politely.
 *   idle       open `conns` connections, report, hold them until stdin is readable, close them.
 *   hold       open `conns` connections, report, and keep them as an idle app does: answer the
 *              server's pings (counted) and its close frames (counted by code), until the server
 *              has closed them all or stdin ends. Each line on stdin asks for a report
 *              {"phase":"report","open","pings","pinged"} (`pinged`: connections pinged at least
 *              once). For tests/test_scale.py: the server's heartbeat and drain at scale.
 *   fanout     open `conns` connections, report, and time the events pushed to all of them (for
 *              bench/fanout): each `fanout` event carries `data.seq` (1..MAX_SEQ); its arrival
 *              on each connection is timed (CLOCK_MONOTONIC, the clock of Python's
 *              time.monotonic()) and once every open connection has it a line
 *              {"phase":"seq","seq","count","first","last"} says when it reached the first and
 *              the last one. A second copy of a seq on one connection counts as `doubled`. The
 *              end of stdin ends the run; the result lists every seq seen, [seq, count, first,
 *              last], so that the runner can count what never arrived.
 *
 * `source=ADDR` binds every connection to that local address (e.g. 127.0.0.2): one source
 * address has only as many ephemeral ports as net.ipv4.ip_local_port_range holds (about 28,000),
 * so more connections to one server port need several addresses, i.e. several clients.
 * `open_seconds` is how long opening all `conns` may take (default 60).
 *
 * Progress and results are JSON lines on stdout: {"phase":"measure"} and {"phase":"measured"} when
 * the timed window starts and ends, {"phase":"ready"} when idle or held connections are all open,
 * {"phase":"result",...} last.
 *
 * Every reply is checked. What a right reply is depends on the server, so each row names a check:
 *   as-is    bare peers: a native reply equals the frame sent, byte for byte; a Socket.IO ack's first
 *            argument equals the data sent (compared after dropping JSON whitespace, which
 *            python-socketio adds).
 *   yektaws  CONTRACT.md section 4: `echo_response` with `received` equal to the data sent, a
 *            `timestamp` and a `socketId`; native replies carry the request's `id`.
 * A reply that fails its check is counted in `errors`; the first one is quoted in `firstError`.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Connections set up at once in echo and idle runs: quick, yet within a listen backlog of 128. */
#define OPEN_CONCURRENCY 100
/* How long replies still in flight may take once the timed window is over. */
#define DRAIN_SECONDS 5.0
/* How long connections may take to answer a close before the client exits anyway. */
#define CLOSE_SECONDS 2.0
/* How long setting up all connections of a run may take. */
#define OPEN_SECONDS 60.0
/* Largest frame accepted from a server; replies here are a few hundred bytes. */
#define MAX_FRAME (1 << 20)
/* Highest `seq` a fanout event may carry (one bit per seq per connection). */
#define MAX_SEQ 4096
/* Padding that brings a native request to about 110 bytes and its `data` object to about 80. */
#define PAD "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

enum proto { NATIVE, SIO };
enum check { AS_IS, YEKTAWS };
enum state { CONNECTING, UPGRADING, OPENING, READY, CLOSING, DEAD };

struct conn {
    int fd;
    int idx;
    enum state st;
    char *in;
    size_t inlen, incap;
    char *out;
    size_t outlen, outcap;
    int want_out;
    const char *token;
    /* The request in flight. */
    int busy;
    long seq;
    double t0;
    char data[128];
    int datalen;
    char frame[256];
    int framelen;
    /* Pings received from the server. */
    long pings;
    /* fanout mode: the seqs this connection has received, one bit each. */
    unsigned char *seen;
};

static struct {
    enum proto proto;
    enum check check;
    const char *mode;
    const char *path;
    const char *source;
    int port, conns, count, concurrency;
    double warmup, duration, open_seconds;
    char **tokens;
    int ntokens, next_token;
} opt = {.path = "/ws", .conns = 100, .count = 1000, .concurrency = 50, .warmup = 2, .duration = 10,
       .open_seconds = OPEN_SECONDS};

static int ep;
static long errors;
static char first_error[512];
static int ready_count, failed_count, closed_count;
static int measuring;
static double *lat;
static size_t nlat, latcap;
/* hold mode: a close frame from the server is answered and counted, not a failure. */
static int answer_closes;
static long pings_total;
static int pinged_count;
#define MAX_CLOSE_CODES 16
static struct {
    int code, count;
} closes[MAX_CLOSE_CODES];
static int nclose_codes;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void fail(const char *fmt, ...) {
    errors++;
    if (first_error[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(first_error, sizeof first_error, fmt, ap);
    va_end(ap);
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p)
        die("realloc");
    return p;
}

/* ---- JSON, just enough to check replies: canonical text has no whitespace outside strings. */

struct slice {
    const char *p;
    size_t n;
};

static size_t canonicalize(const char *s, size_t n, char *dst, size_t cap) {
    size_t o = 0;
    int in_str = 0;
    for (size_t i = 0; i < n && o < cap; i++) {
        char ch = s[i];
        if (in_str) {
            dst[o++] = ch;
            if (ch == '\\' && i + 1 < n && o < cap)
                dst[o++] = s[++i];
            else if (ch == '"')
                in_str = 0;
        } else if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
            dst[o++] = ch;
            in_str = ch == '"';
        }
    }
    return o;
}

static const char *skip_value(const char *p, const char *e);

static const char *skip_string(const char *p, const char *e) {
    for (p++; p < e; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

static const char *skip_container(const char *p, const char *e) {
    char open = *p, close = open == '{' ? '}' : ']';
    if (++p < e && *p == close)
        return p + 1;
    while (p && p < e) {
        if (open == '{') {
            if (*p != '"' || !(p = skip_string(p, e)) || p >= e || *p != ':')
                return NULL;
            p++;
        }
        if (!(p = skip_value(p, e)) || p >= e)
            return NULL;
        if (*p == close)
            return p + 1;
        if (*p++ != ',')
            return NULL;
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *e) {
    if (p >= e)
        return NULL;
    if (*p == '"')
        return skip_string(p, e);
    if (*p == '{' || *p == '[')
        return skip_container(p, e);
    const char *s = p;
    while (p < e && *p != ',' && *p != '}' && *p != ']')
        p++;
    return p > s ? p : NULL;
}

/* The value of `key` in the object `obj`, or an empty slice. */
static struct slice get(struct slice obj, const char *key) {
    const char *p = obj.p, *e = obj.p + obj.n;
    size_t klen = strlen(key);
    struct slice none = {NULL, 0};
    if (p >= e || *p != '{' || (p + 1 < e && p[1] == '}'))
        return none;
    for (p++; p < e;) {
        const char *k = p, *ke = skip_string(p, e);
        if (*k != '"' || !ke || ke >= e || *ke != ':')
            return none;
        const char *v = ke + 1, *ve = skip_value(v, e);
        if (!ve)
            return none;
        if ((size_t)(ke - k) == klen + 2 && !memcmp(k + 1, key, klen))
            return (struct slice){v, (size_t)(ve - v)};
        if (ve >= e || *ve != ',')
            return none;
        p = ve + 1;
    }
    return none;
}

static struct slice first_item(struct slice arr) {
    struct slice none = {NULL, 0};
    if (arr.n < 2 || arr.p[0] != '[')
        return none;
    const char *v = arr.p + 1, *ve = skip_value(v, arr.p + arr.n);
    return ve ? (struct slice){v, (size_t)(ve - v)} : none;
}

static int equals(struct slice s, const char *text, size_t n) {
    return s.p && s.n == n && !memcmp(s.p, text, n);
}

static int is_string(struct slice s, size_t min_len) {
    return s.p && s.n >= min_len + 2 && s.p[0] == '"';
}

/* ---- Reply checks. Each returns NULL for a right reply, or what is wrong. */

static const char *SKIP = "skip";

static const char *check_echo_response(struct slice data, const struct conn *c) {
    if (!data.p || data.p[0] != '{')
        return "echo_response data is not an object";
    if (!equals(get(data, "received"), c->data, c->datalen))
        return "received differs from what was sent";
    if (!is_string(get(data, "timestamp"), 1))
        return "timestamp missing";
    if (!is_string(get(data, "socketId"), 1))
        return "socketId missing";
    return NULL;
}

static char scratch[MAX_FRAME];

/* A native text frame; SKIP for one that is not a reply (a pushed event). */
static const char *check_native(const struct conn *c, const char *text, size_t n) {
    if (opt.check == AS_IS) {
        if (!c->busy)
            return "unsolicited frame";
        return n == (size_t)c->framelen && !memcmp(text, c->frame, n) ? NULL : "reply differs";
    }
    struct slice msg = {scratch, canonicalize(text, n, scratch, sizeof scratch)};
    struct slice id = get(msg, "id");
    if (!id.p)
        return msg.n && msg.p[0] == '{' ? SKIP : "reply is not a JSON object";
    if (!c->busy)
        return "reply with an id while none was due";
    char want[24];
    int wn = snprintf(want, sizeof want, "%ld", c->seq);
    if (!equals(id, want, wn))
        return "reply id differs from the request's";
    if (!equals(get(msg, "event"), "\"echo_response\"", 15))
        return "reply event is not echo_response";
    return check_echo_response(get(msg, "data"), c);
}

/* The arguments of a Socket.IO ack, as the JSON array text after the ack id. */
static const char *check_ack(const struct conn *c, const char *args, size_t n) {
    struct slice arr = {scratch, canonicalize(args, n, scratch, sizeof scratch)};
    struct slice first = first_item(arr);
    if (opt.check == AS_IS)
        return equals(first, c->data, c->datalen) ? NULL : "ack differs from the data sent";
    return check_echo_response(first, c);
}

/* ---- Sockets and WebSocket frames. */

static void watch(struct conn *c, int op) {
    struct epoll_event ev = {.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, op, c->fd, &ev) < 0)
        die("epoll_ctl");
}

static void flush(struct conn *c) {
    while (c->outlen) {
        ssize_t w = write(c->fd, c->out, c->outlen);
        if (w < 0) {
            if (errno == EAGAIN)
                break;
            return; /* the read side reports the failure */
        }
        memmove(c->out, c->out + w, c->outlen - w);
        c->outlen -= w;
    }
    int want = c->outlen > 0;
    if (want != c->want_out) {
        c->want_out = want;
        watch(c, EPOLL_CTL_MOD);
    }
}

static void put(struct conn *c, const void *p, size_t n) {
    if (c->outlen + n > c->outcap) {
        c->outcap = (c->outlen + n) * 2;
        c->out = xrealloc(c->out, c->outcap);
    }
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
}

/* Client frames must be masked (RFC 6455 5.3); the key's value does not matter here. */
static void send_frame(struct conn *c, int opcode, const char *payload, size_t n) {
    if (n > 0xffff) {
        fail("refusing to send a %zu-byte frame", n);
        return;
    }
    unsigned char hdr[8] = {0x80 | opcode};
    size_t h = 2;
    if (n < 126) {
        hdr[1] = 0x80 | n;
    } else {
        hdr[1] = 0x80 | 126;
        hdr[2] = n >> 8;
        hdr[3] = n & 0xff;
        h = 4;
    }
    static const unsigned char key[4] = {0x5a, 0x3c, 0x96, 0x0f};
    memcpy(hdr + h, key, 4);
    put(c, hdr, h + 4);
    size_t at = c->outlen;
    put(c, payload, n);
    for (size_t i = 0; i < n; i++)
        c->out[at + i] ^= key[i & 3];
    flush(c);
}

static void send_text(struct conn *c, const char *s, size_t n) { send_frame(c, 1, s, n); }

static void drop(struct conn *c) {
    if (c->st == DEAD)
        return;
    c->st = DEAD;
    close(c->fd);
    closed_count++;
}

static void start_close(struct conn *c) {
    if (c->st == DEAD || c->st == CLOSING)
        return;
    if (c->st != READY) {
        drop(c);
        return;
    }
    if (opt.proto == SIO)
        send_text(c, "41", 2);
    send_frame(c, 8, "\x03\xe8", 2); /* 1000 normal closure */
    c->st = CLOSING;
}

/* Connections are never freed: an epoll batch may still name one that was just closed, and a
 * run allocates at most `conns` or `count` of them before the process exits. */
static struct conn *open_conn(int idx) {
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        die("calloc");
    c->idx = idx;
    c->incap = 4096;
    c->in = xrealloc(NULL, c->incap);
    if (opt.ntokens)
        c->token = opt.tokens[opt.next_token++ % opt.ntokens];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.source) {
        /* The port is chosen at connect(), per destination, not at bind() for all of them. */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in local = {.sin_family = AF_INET};
        if (inet_pton(AF_INET, opt.source, &local.sin_addr) != 1)
            die("source= is not an IPv4 address");
        if (bind(c->fd, (struct sockaddr *)&local, sizeof local) < 0)
            die("bind");
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(opt.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS)
        die("connect");
    c->st = CONNECTING;
    c->want_out = 1;
    watch(c, EPOLL_CTL_ADD);
    return c;
}

static void send_upgrade(struct conn *c) {
    char req[1024], target[512];
    if (opt.proto == SIO)
        snprintf(target, sizeof target, "/socket.io/?EIO=4&transport=websocket");
    else if (c->token)
        /* path may carry a query of its own (path=/ws?recover=1): the token joins it. */
        snprintf(target, sizeof target, "%s%ctoken=%s", opt.path,
                 strchr(opt.path, '?') ? '&' : '?', c->token);
    else
        snprintf(target, sizeof target, "%s", opt.path);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     target, opt.port);
    c->st = UPGRADING;
    put(c, req, n);
    flush(c);
}

/* ---- What each mode does when a connection becomes ready, gets a reply, or fails. */

static void (*on_ready)(struct conn *c);
static void (*on_reply)(struct conn *c);

static void become_ready(struct conn *c) {
    c->st = READY;
    ready_count++;
    on_ready(c);
}

static void conn_failed(struct conn *c, const char *why) {
    if (c->st == CLOSING) {
        drop(c);
        return;
    }
    if (c->st != READY)
        failed_count++;
    fail("connection %d: %s", c->idx, why);
    drop(c);
}

static void got_reply(struct conn *c, const char *verdict) {
    if (verdict == SKIP)
        return;
    if (verdict)
        fail("connection %d request %ld: %s", c->idx, c->seq, verdict);
    c->busy = 0;
    if (measuring) {
        if (nlat == latcap) {
            latcap = latcap ? latcap * 2 : 1 << 20;
            lat = xrealloc(lat, latcap * sizeof *lat);
        }
        lat[nlat++] = (now() - c->t0) * 1000;
    }
    on_reply(c);
}

/* ---- fanout mode: when each pushed event reached the first and the last connection. */

static void emit(const char *fmt, ...);
static int fanout_mode;
static long doubled;
static struct {
    int count;
    double first, last;
} arrivals[MAX_SEQ + 1];

static struct slice second_item(struct slice arr) {
    struct slice none = {NULL, 0};
    struct slice first = first_item(arr);
    if (!first.p || first.p + first.n >= arr.p + arr.n || first.p[first.n] != ',')
        return none;
    const char *v = first.p + first.n + 1, *ve = skip_value(v, arr.p + arr.n);
    return ve ? (struct slice){v, (size_t)(ve - v)} : none;
}

/* A `fanout` event with `data` arrived on c (timed on arrival); other events are skipped. */
static void fanout_event(struct conn *c, struct slice event, struct slice data) {
    double t = now();
    if (!equals(event, "\"fanout\"", 8)) {
        if (!equals(event, "\"connected\"", 11)) /* Socket.IO's greeting comes as an event */
            fail("connection %d: unexpected event %.*s", c->idx, (int)event.n, event.p);
        return;
    }
    struct slice seqv = get(data, "seq");
    long seq = seqv.p ? strtol(seqv.p, NULL, 10) : 0;
    if (seq < 1 || seq > MAX_SEQ)
        return fail("connection %d: fanout event without a seq in 1..%d", c->idx, MAX_SEQ);
    if (!c->seen)
        c->seen = calloc(MAX_SEQ / 8 + 1, 1);
    unsigned char bit = 1u << (seq & 7);
    if (c->seen[seq >> 3] & bit) {
        doubled++;
        return;
    }
    c->seen[seq >> 3] |= bit;
    if (arrivals[seq].count++ == 0)
        arrivals[seq].first = t;
    arrivals[seq].last = t;
    if (arrivals[seq].count == ready_count - closed_count)
        emit("{\"phase\":\"seq\",\"seq\":%ld,\"count\":%d,\"first\":%.6f,\"last\":%.6f}\n", seq,
             arrivals[seq].count, arrivals[seq].first, arrivals[seq].last);
}

static void on_sio_packet(struct conn *c, const char *p, size_t n) {
    if (n == 0)
        return fail("empty Engine.IO packet");
    switch (p[0]) {
    case '0': { /* Engine.IO open: now connect to the default namespace */
        char pkt[128];
        int m = c->token ? snprintf(pkt, sizeof pkt, "40{\"token\":\"%s\"}", c->token)
                         : snprintf(pkt, sizeof pkt, "40");
        send_text(c, pkt, m);
        return;
    }
    case '2':
        send_text(c, "3", 1);
        return;
    case '3':
        return;
    case '4':
        break;
    default:
        return conn_failed(c, "Engine.IO closed the connection");
    }
    char kind = n > 1 ? p[1] : 0;
    if (kind == '0' && c->st == OPENING)
        return become_ready(c);
    if (kind == '2' && fanout_mode && n > 2 && p[2] == '[') {
        struct slice arr = {scratch, canonicalize(p + 2, n - 2, scratch, sizeof scratch)};
        return fanout_event(c, first_item(arr), second_item(arr));
    }
    if (kind == '2') /* a pushed event such as `connected` or `echo_response` */
        return;
    if (kind == '3') {
        size_t i = 2;
        long id = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9')
            id = id * 10 + (p[i++] - '0');
        if (!c->busy || id != c->seq)
            return fail("connection %d: ack %ld was not due", c->idx, id);
        return got_reply(c, check_ack(c, p + i, n - i));
    }
    conn_failed(c, kind == '4' ? "Socket.IO connect refused" : "unexpected Socket.IO packet");
}

static void on_text(struct conn *c, const char *p, size_t n) {
    if (opt.proto == SIO)
        return on_sio_packet(c, p, n);
    if (c->st == OPENING) { /* yektaws announces an authenticated connection with `connected` */
        struct slice msg = {scratch, canonicalize(p, n, scratch, sizeof scratch)};
        if (equals(get(msg, "event"), "\"connected\"", 11) &&
            is_string(get(get(msg, "data"), "socketId"), 1))
            return become_ready(c);
        return conn_failed(c, "first frame is not `connected`");
    }
    if (fanout_mode) {
        struct slice msg = {scratch, canonicalize(p, n, scratch, sizeof scratch)};
        return fanout_event(c, get(msg, "event"), get(msg, "data"));
    }
    const char *verdict = check_native(c, p, n);
    if (!c->busy && verdict != SKIP)
        return fail("connection %d: %s", c->idx, verdict ? verdict : "unsolicited frame");
    got_reply(c, verdict);
}

static void after_upgrade(struct conn *c) {
    if (opt.proto == NATIVE && opt.check == AS_IS)
        become_ready(c);
    else
        c->st = OPENING;
}

static void count_close(int code) {
    for (int i = 0; i < nclose_codes; i++)
        if (closes[i].code == code) {
            closes[i].count++;
            return;
        }
    if (nclose_codes < MAX_CLOSE_CODES)
        closes[nclose_codes++] = (typeof(closes[0])){code, 1};
}

/* Consumes whole frames from c->in; returns 0 once the connection is gone. */
static int parse_frames(struct conn *c) {
    size_t at = 0;
    while (c->st != DEAD && c->inlen - at >= 2) {
        unsigned char *h = (unsigned char *)c->in + at;
        int opcode = h[0] & 0x0f, fin = h[0] & 0x80;
        size_t len = h[1] & 0x7f, hl = 2;
        if (h[1] & 0x80)
            return conn_failed(c, "server frame is masked"), 0;
        if (len == 126) {
            if (c->inlen - at < 4)
                break;
            len = (h[2] << 8) | h[3];
            hl = 4;
        } else if (len == 127) {
            return conn_failed(c, "frame over 64 KiB"), 0;
        }
        if (c->inlen - at < hl + len)
            break;
        const char *payload = c->in + at + hl;
        at += hl + len;
        if (!fin)
            return conn_failed(c, "fragmented frame"), 0;
        if (opcode == 1 || opcode == 2) {
            if (c->st != CLOSING)
                on_text(c, payload, len);
        } else if (opcode == 8) {
            int code = len >= 2 ? ((unsigned char)payload[0] << 8) | (unsigned char)payload[1] : 0;
            if (c->st == CLOSING) {
                drop(c);
            } else if (answer_closes) {
                count_close(code);
                send_frame(c, 8, payload, len >= 2 ? 2 : 0); /* the closing handshake's answer */
                c->st = CLOSING; /* the server ends the TCP connection next */
            } else {
                char why[64];
                snprintf(why, sizeof why, "server closed with %d", code);
                conn_failed(c, why);
            }
        } else if (opcode == 9) {
            send_frame(c, 10, payload, len);
            pings_total++;
            pinged_count += c->pings++ == 0;
        }
    }
    if (c->st == DEAD)
        return 0;
    memmove(c->in, c->in + at, c->inlen - at);
    c->inlen -= at;
    return 1;
}

static void on_readable(struct conn *c) {
    for (;;) {
        if (c->inlen == c->incap) {
            if (c->incap >= MAX_FRAME)
                return conn_failed(c, "frame too large");
            c->incap *= 2;
            c->in = xrealloc(c->in, c->incap);
        }
        ssize_t r = read(c->fd, c->in + c->inlen, c->incap - c->inlen);
        if (r == 0)
            return conn_failed(c, "server closed the TCP connection");
        if (r < 0) {
            if (errno == EAGAIN)
                break;
            return conn_failed(c, strerror(errno));
        }
        c->inlen += r;
        if (c->inlen < c->incap)
            break; /* the socket is drained: spare the read that would say EAGAIN */
    }
    if (c->st == UPGRADING) {
        char *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
        if (!end)
            return;
        if (c->inlen < 12 || memcmp(c->in, "HTTP/1.1 101", 12)) {
            char why[160];
            snprintf(why, sizeof why, "upgrade refused: %.100s", c->in);
            *strchrnul(why, '\r') = 0;
            return conn_failed(c, why);
        }
        size_t hl = end + 4 - c->in;
        memmove(c->in, c->in + hl, c->inlen - hl);
        c->inlen -= hl;
        after_upgrade(c);
    }
    parse_frames(c);
}

static void on_event(struct conn *c, uint32_t events) {
    if (c->st == DEAD)
        return;
    if (c->st == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err)
            return conn_failed(c, strerror(err));
        if (events & EPOLLOUT)
            send_upgrade(c);
        return;
    }
    if (events & EPOLLOUT)
        flush(c);
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(c);
}

/* What stdin becoming readable means to the run: 1 ends the loop (the idle mode's signal). */
static int stdin_ends_run(void) { return 1; }
static int (*on_stdin)(void) = stdin_ends_run;

/* Runs the event loop until `done()` says so; returns 0 if `deadline` passed first. With
 * `stdin_ends`, stdin (watched by the caller) is handed to `on_stdin`, which may end it too. */
static int loop_until(int (*done)(void), double deadline, int stdin_ends) {
    struct epoll_event evs[512];
    while (!done()) {
        double left = deadline - now();
        if (left <= 0)
            return 0;
        int n = epoll_wait(ep, evs, 512, left > 0.05 ? 50 : (int)(left * 1000) + 1);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                if (stdin_ends && on_stdin())
                    return 1;
                continue;
            }
            on_event(evs[i].data.ptr, evs[i].events);
        }
    }
    return 1;
}

/* ---- Modes. */

static struct conn **conns;
static int nconns, opened, inflight, stopping;

static void emit(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static void emit_result(const char *fields) {
    char err[1100] = "null";
    if (first_error[0]) {
        char *o = err;
        *o++ = '"';
        for (const char *p = first_error; *p && o < err + sizeof err - 3; p++) {
            if (*p == '"' || *p == '\\')
                *o++ = '\\';
            *o++ = (unsigned char)*p < 0x20 ? '?' : *p;
        }
        *o++ = '"';
        *o = 0;
    }
    emit("{\"phase\":\"result\",%s\"errors\":%ld,\"firstError\":%s}\n", fields, errors, err);
}

static void noop(struct conn *c) { (void)c; }

static void open_next(void) {
    while (opened < nconns && opened - ready_count - failed_count < OPEN_CONCURRENCY) {
        conns[opened] = open_conn(opened);
        opened++;
    }
}

static void ready_then_open_next(struct conn *c) {
    (void)c;
    open_next();
}

static int all_settled(void) {
    if (ready_count + failed_count < nconns)
        open_next();
    return ready_count + failed_count >= nconns;
}

static int all_closed(void) { return closed_count >= opened; }

static int open_all(void) {
    nconns = opt.conns;
    conns = calloc(nconns, sizeof *conns);
    on_ready = ready_then_open_next;
    on_reply = noop;
    open_next();
    if (!loop_until(all_settled, now() + opt.open_seconds, 0))
        fail("only %d of %d connections opened in %.0f s", ready_count, nconns, opt.open_seconds);
    return errors == 0;
}

static void close_all(void) {
    for (int i = 0; i < opened; i++)
        start_close(conns[i]);
    loop_until(all_closed, now() + CLOSE_SECONDS, 0);
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void send_echo(struct conn *c) {
    if (stopping || c->st != READY) {
        inflight--;
        return;
    }
    c->seq++;
    c->datalen = snprintf(c->data, sizeof c->data, "{\"conn\":%d,\"seq\":%ld,\"text\":\"" PAD "\"}",
                          c->idx, c->seq);
    if (opt.proto == NATIVE)
        c->framelen = snprintf(c->frame, sizeof c->frame, "{\"event\":\"echo\",\"data\":%s,\"id\":%ld}",
                               c->data, c->seq);
    else
        c->framelen = snprintf(c->frame, sizeof c->frame, "42%ld[\"echo\",%s]", c->seq, c->data);
    c->busy = 1;
    c->t0 = now();
    send_text(c, c->frame, c->framelen);
}

static int drained(void) { return inflight == 0; }

static void run_echo(void) {
    if (open_all()) {
        on_reply = send_echo;
        inflight = nconns;
        for (int i = 0; i < nconns; i++)
            send_echo(conns[i]);
        loop_until(drained, now() + opt.warmup, 0);
        measuring = 1;
        emit("{\"phase\":\"measure\"}\n");
        double t0 = now(), cpu0 = cpu_seconds();
        loop_until(drained, t0 + opt.duration, 0);
        double wall = now() - t0, cpu = cpu_seconds() - cpu0;
        measuring = 0;
        stopping = 1;
        emit("{\"phase\":\"measured\"}\n");
        if (!loop_until(drained, now() + DRAIN_SECONDS, 0))
            fail("%d replies never arrived", inflight);
        else if (inflight)
            fail("%d connections stopped answering", inflight);
        for (int i = 0; i < nconns; i++)
            if (conns[i]->st != READY)
                fail("connection %d closed during the run", i);
        close_all();
        qsort(lat, nlat, sizeof *lat, compare_doubles);
        char fields[512];
        snprintf(fields, sizeof fields,
                 "\"messages\":%zu,\"msgPerSec\":%.1f,\"p50Ms\":%.3f,\"p99Ms\":%.3f,"
                 "\"clientCpuPct\":%.1f,",
                 nlat, nlat / wall, nlat ? lat[nlat / 2] : 0, nlat ? lat[nlat * 99 / 100] : 0,
                 100 * cpu / wall);
        emit_result(fields);
    } else {
        emit_result("");
    }
}

static int handshakes_started;

static void start_handshakes(void) {
    while (handshakes_started < opt.count &&
           handshakes_started - ready_count - failed_count < opt.concurrency) {
        open_conn(handshakes_started++);
        opened++;
    }
}

static void handshake_ready(struct conn *c) {
    start_close(c);
    start_handshakes();
}

static int handshakes_done(void) {
    start_handshakes(); /* refills slots freed by failures */
    return ready_count + failed_count >= opt.count;
}

static void run_handshake(void) {
    on_ready = handshake_ready;
    on_reply = noop;
    double t0 = now(), cpu0 = cpu_seconds();
    start_handshakes();
    if (!loop_until(handshakes_done, t0 + OPEN_SECONDS, 0))
        fail("only %d of %d handshakes in %.0f s", ready_count, opt.count, OPEN_SECONDS);
    double wall = now() - t0, cpu = cpu_seconds() - cpu0;
    loop_until(all_closed, now() + CLOSE_SECONDS, 0);
    char fields[256];
    snprintf(fields, sizeof fields, "\"connects\":%d,\"connectsPerSec\":%.1f,\"clientCpuPct\":%.1f,",
             ready_count, ready_count / wall, 100 * cpu / wall);
    emit_result(fields);
}

static int never(void) { return 0; }

static void run_idle(void) {
    if (open_all()) {
        emit("{\"phase\":\"ready\",\"open\":%d}\n", ready_count);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
        loop_until(never, now() + 3600, 1);
        int still = 0;
        for (int i = 0; i < nconns; i++)
            still += conns[i]->st == READY;
        if (still != nconns)
            fail("%d idle connections were closed", nconns - still);
        close_all();
        char fields[64];
        snprintf(fields, sizeof fields, "\"open\":%d,", still);
        emit_result(fields);
    } else {
        emit_result("");
    }
}

static int still_open(void) {
    int n = 0;
    for (int i = 0; i < nconns; i++)
        n += conns[i]->st == READY;
    return n;
}

/* hold: a line on stdin asks for a report; its end ends the run. */
static int hold_command(void) {
    char buf[256];
    ssize_t r = read(0, buf, sizeof buf);
    if (r <= 0)
        return 1;
    emit("{\"phase\":\"report\",\"open\":%d,\"pings\":%ld,\"pinged\":%d}\n", still_open(),
         pings_total, pinged_count);
    return 0;
}

/* Opens every connection, says so ({"phase":"ready","open","seconds"}) and watches stdin; 0 (the
 * result already reported) when they could not all be opened. */
static int open_then_watch_stdin(void) {
    double t0 = now();
    if (!open_all()) {
        emit_result("");
        return 0;
    }
    emit("{\"phase\":\"ready\",\"open\":%d,\"seconds\":%.3f}\n", ready_count, now() - t0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    return 1;
}

static void run_hold(void) {
    answer_closes = 1;
    if (!open_then_watch_stdin())
        return;
    on_stdin = hold_command;
    loop_until(all_closed, now() + 24 * 3600, 1);
    int still = still_open();
    close_all();
    char fields[1024] = "";
    int n = snprintf(fields, sizeof fields, "\"open\":%d,\"pings\":%ld,\"pinged\":%d,\"closes\":{",
                     still, pings_total, pinged_count);
    for (int i = 0; i < nclose_codes; i++)
        n += snprintf(fields + n, sizeof fields - n, "%s\"%d\":%d", i ? "," : "", closes[i].code,
                      closes[i].count);
    snprintf(fields + n, sizeof fields - n, "},");
    emit_result(fields);
}

static void run_fanout(void) {
    fanout_mode = 1;
    if (!open_then_watch_stdin())
        return;
    double cpu0 = cpu_seconds(), wall0 = now();
    loop_until(never, now() + 24 * 3600, 1);
    double cpu = cpu_seconds() - cpu0, wall = now() - wall0;
    int still = still_open();
    close_all();
    size_t cap = 256 + (size_t)MAX_SEQ * 64, n = 0;
    char *fields = xrealloc(NULL, cap);
    n += snprintf(fields + n, cap - n, "\"open\":%d,\"doubled\":%ld,\"clientCpuPct\":%.1f,\"seqs\":[",
                  still, doubled, 100 * cpu / wall);
    int listed = 0;
    for (int seq = 1; seq <= MAX_SEQ; seq++)
        if (arrivals[seq].count)
            n += snprintf(fields + n, cap - n, "%s[%d,%d,%.6f,%.6f]", listed++ ? "," : "", seq,
                          arrivals[seq].count, arrivals[seq].first, arrivals[seq].last);
    snprintf(fields + n, cap - n, "],");
    emit_result(fields);
    free(fields);
}

static void load_tokens(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        die(path);
    char line[256];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0])
            continue;
        opt.tokens = xrealloc(opt.tokens, (opt.ntokens + 1) * sizeof *opt.tokens);
        opt.tokens[opt.ntokens++] = strdup(line);
    }
    fclose(f);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "usage: see the comment at the top of load.c\n");
            return 2;
        }
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (!strcmp(k, "mode"))
            opt.mode = v;
        else if (!strcmp(k, "proto"))
            opt.proto = strcmp(v, "sio") ? NATIVE : SIO;
        else if (!strcmp(k, "check"))
            opt.check = strcmp(v, "yektaws") ? AS_IS : YEKTAWS;
        else if (!strcmp(k, "port"))
            opt.port = atoi(v);
        else if (!strcmp(k, "path"))
            opt.path = v;
        else if (!strcmp(k, "conns"))
            opt.conns = atoi(v);
        else if (!strcmp(k, "count"))
            opt.count = atoi(v);
        else if (!strcmp(k, "concurrency"))
            opt.concurrency = atoi(v);
        else if (!strcmp(k, "warmup"))
            opt.warmup = atof(v);
        else if (!strcmp(k, "duration"))
            opt.duration = atof(v);
        else if (!strcmp(k, "tokens"))
            load_tokens(v);
        else if (!strcmp(k, "source"))
            opt.source = v;
        else if (!strcmp(k, "open_seconds"))
            opt.open_seconds = atof(v);
        else {
            fprintf(stderr, "unknown option %s\n", k);
            return 2;
        }
    }
    if (!opt.mode || !opt.port) {
        fprintf(stderr, "mode= and port= are required\n");
        return 2;
    }
    if ((ep = epoll_create1(0)) < 0)
        die("epoll_create1");
    if (!strcmp(opt.mode, "echo"))
        run_echo();
    else if (!strcmp(opt.mode, "handshake"))
        run_handshake();
    else if (!strcmp(opt.mode, "idle"))
        run_idle();
    else if (!strcmp(opt.mode, "hold"))
        run_hold();
    else if (!strcmp(opt.mode, "fanout"))
        run_fanout();
    else {
        fprintf(stderr, "unknown mode %s\n", opt.mode);
        return 2;
    }
    return 0;
}
