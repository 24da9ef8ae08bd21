/*
 * h2c-grpc: a closed-loop gRPC load generator for bench/deduct.ts, the gRPC
 * counterpart of wrk + bench/wrk-deduct.lua. It sends what
 * bench/lean-clients.ts's leanGrpcClient sends, with almost no CPU per call:
 *
 * - one TCP connection (TCP_NODELAY), HTTP/2 cleartext with prior knowledge,
 *   like the lean client's one http2 session;
 * - CONCURRENCY streams in flight, one unary call each; when a stream closes
 *   the next call starts (closed loop) until SECONDS have passed, then the
 *   calls in flight are waited for (like the bench's drive());
 * - each call: POST PATH with content-type application/grpc+proto, te:
 *   trailers and authorization: Bearer TOKEN, a body of the 5-byte gRPC
 *   envelope and the request encoded here by hand:
 *     DeductCreditsRequest { account_id = 1, operation_type = 2
 *       ("content_generation"), usage = 3 { credits = 1 }, idempotency_key = 7 }
 *     EchoRequest { payload = 1 ("ping") }
 * - every DeductCredits carries a fresh idempotency key PREFIX + the call
 *   number as 12 hex digits (PREFIX of 24 characters makes it UUID-shaped,
 *   as long as the lean client's randomUUID()); the account is bench_(n %
 *   ACCOUNTS) for the n-th call (spread) or bench_0 (hot);
 * - a call counts only with HTTP 200, trailer grpc-status "0" and a
 *   non-empty message; anything else is counted, and the last kept, as an
 *   error (like the lean client).
 *
 * - paced (open loop) when RATE (calls/s) is given: call n is due at
 *   start + n / RATE, for n < floor(RATE * SECONDS), and is started then
 *   however many calls are in flight (CONCURRENCY is ignored; a safety cap
 *   of PACED_MAX_INFLIGHT calls, and the server's MAX_CONCURRENT_STREAMS,
 *   which nghttp2 queues behind, only delay it); its latency is measured
 *   from its due time, not from when it went out, so a stall of the server
 *   (or of this process) is not hidden by calls that were never started (no
 *   coordinated omission), as bench/deduct.ts's pace() measures it. Then
 *   the calls in flight are waited for; whatever has not answered
 *   DRAIN_SECONDS after the last due time counts as an error. The loop
 *   sleeps in ppoll() until the next due time or the socket (no spinning).
 *
 * Build: cc -O2 -o h2c-grpc bench/h2c-grpc.c -lnghttp2 (Debian: libnghttp2-dev)
 * Run:   h2c-grpc HOST PORT MODE TOKEN PREFIX ACCOUNTS CONCURRENCY SECONDS [RATE]
 *        MODE: spread | hot | echo
 *        H2C_DEBUG=N in the environment prints the first N DeductCredits
 *        answers' transaction ids to stderr ("h2c-txid ID"): a replayed key
 *        would answer an id already seen.
 * Output (stdout), machine-readable: h2c-ok, h2c-bad, h2c-duration-us,
 * h2c-p50-us, h2c-p99-us, h2c-cpu-s (this process's user + system CPU),
 * when paced h2c-max-start-lag-us (the latest any call was handed to
 * nghttp2 after its due time: this process's own scheduling delay, part of
 * the latencies) and, when there were errors, h2c-last-bad.
 */
#define _GNU_SOURCE /* ppoll */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BODY_MAX 600
#define RESP_KEEP 128
#define DRAIN_SECONDS 10
#define PACED_MAX_INFLIGHT 10000

struct call {
  uint8_t body[BODY_MAX];
  size_t body_len, body_off;
  int64_t t0_us;
  int status;
  char grpc_status[16];
  char grpc_message[160];
  size_t received;
  uint8_t resp[RESP_KEEP]; /* the answer's first bytes, for H2C_DEBUG */
  size_t resp_len;
  int is_deduct;
};

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* run state */
static const char *mode_path;
static int mode_hot, mode_echo;
static const char *prefix;
static unsigned accounts;
static char authority[300], auth_header[600];
static uint64_t started, ok, bad;
static unsigned inflight;
static char last_bad[400];
static uint32_t *lat;
static size_t lat_n, lat_cap;
static int debug_left;
static int64_t max_start_lag; /* paced: how late (µs) a call went to nghttp2 after its due time, at worst */

static void fail(const char *what) {
  fprintf(stderr, "h2c-grpc: %s\n", what);
  exit(2);
}

/* protobuf: a varint, and a length-delimited field (tag, length, bytes) */
static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (uint8_t)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (uint8_t)v;
  return n;
}
static size_t put_bytes(uint8_t *p, unsigned field, const void *s, size_t len) {
  size_t n = put_varint(p, (uint64_t)field << 3 | 2);
  n += put_varint(p + n, len);
  memcpy(p + n, s, len);
  return n + len;
}

/* the request message of call number `i`, after the 5-byte envelope */
static void encode(struct call *c, uint64_t i) {
  uint8_t *m = c->body + 5;
  size_t n = 0;
  if (mode_echo) {
    n += put_bytes(m + n, 1, "ping", 4);
  } else {
    char account[32], key[300];
    int alen = snprintf(account, sizeof account, "bench_%u", mode_hot ? 0u : (unsigned)(i % accounts));
    int klen = snprintf(key, sizeof key, "%s%012llx", prefix, (unsigned long long)i);
    static const uint8_t usage[] = {0x08, 0x01}; /* Usage { credits = 1 } */
    n += put_bytes(m + n, 1, account, (size_t)alen);
    n += put_bytes(m + n, 2, "content_generation", 18);
    n += put_bytes(m + n, 3, usage, sizeof usage);
    n += put_bytes(m + n, 7, key, (size_t)klen);
  }
  c->body[0] = 0; /* not compressed */
  c->body[1] = (uint8_t)(n >> 24);
  c->body[2] = (uint8_t)(n >> 16);
  c->body[3] = (uint8_t)(n >> 8);
  c->body[4] = (uint8_t)n;
  c->body_len = n + 5;
  c->body_off = 0;
  c->is_deduct = !mode_echo;
}

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags, nghttp2_data_source *src, void *u) {
  (void)s, (void)id, (void)u;
  struct call *c = src->ptr;
  size_t n = c->body_len - c->body_off;
  if (n > len) n = len;
  memcpy(buf, c->body + c->body_off, n);
  c->body_off += n;
  if (c->body_off == c->body_len) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE}

/* starts the next call; its latency counts from t0_us (now, or its due time when paced) */
static void start_call(nghttp2_session *s, int64_t t0_us) {
  struct call *c = calloc(1, sizeof *c);
  if (!c) fail("out of memory");
  encode(c, started++);
  nghttp2_nv hdrs[] = {
      NV(":method", "POST"), NV(":path", mode_path), NV(":scheme", "http"), NV(":authority", authority),
      NV("content-type", "application/grpc+proto"), NV("te", "trailers"), NV("authorization", auth_header),
  };
  nghttp2_data_provider body = {.source = {.ptr = c}, .read_callback = read_body};
  c->t0_us = t0_us;
  int32_t id = nghttp2_submit_request(s, NULL, hdrs, sizeof hdrs / sizeof hdrs[0], &body, c);
  if (id < 0) fail(nghttp2_strerror(id));
  inflight++;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *u) {
  (void)flags, (void)u;
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  struct call *c = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
  if (!c) return 0;
  if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
    c->status = atoi((const char *)value);
  } else if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0) {
    size_t n = vlen < sizeof c->grpc_status - 1 ? vlen : sizeof c->grpc_status - 1;
    memcpy(c->grpc_status, value, n);
    c->grpc_status[n] = 0;
  } else if (nlen == 12 && memcmp(name, "grpc-message", 12) == 0) {
    /* percent-encoded, as the lean client decodes it */
    size_t o = 0;
    for (size_t i = 0; i < vlen && o < sizeof c->grpc_message - 1; i++) {
      unsigned x;
      if (value[i] == '%' && i + 2 < vlen && sscanf((const char *)value + i + 1, "%2x", &x) == 1) {
        c->grpc_message[o++] = (char)x;
        i += 2;
      } else {
        c->grpc_message[o++] = (char)value[i];
      }
    }
    c->grpc_message[o] = 0;
  }
  return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *u) {
  (void)flags, (void)u;
  struct call *c = nghttp2_session_get_stream_user_data(s, id);
  if (!c) return 0;
  c->received += len;
  if (debug_left > 0 && c->resp_len < RESP_KEEP) {
    size_t n = RESP_KEEP - c->resp_len < len ? RESP_KEEP - c->resp_len : len;
    memcpy(c->resp + c->resp_len, data, n);
    c->resp_len += n;
  }
  return 0;
}

static uint64_t get_varint(const uint8_t *p, size_t len, size_t *off) {
  uint64_t v = 0;
  for (int shift = 0; *off < len && shift < 64; shift += 7) {
    uint8_t b = p[(*off)++];
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) break;
  }
  return v;
}

/* DeductCreditsResponse.transaction (1) .id (1), both the first field as protobuf-es writes them */
static void print_txid(const struct call *c) {
  size_t off = 5;
  if (c->resp_len <= off || c->resp[off++] != 0x0a) return;
  get_varint(c->resp, c->resp_len, &off);
  if (off >= c->resp_len || c->resp[off++] != 0x0a) return;
  size_t n = get_varint(c->resp, c->resp_len, &off);
  if (off + n > c->resp_len) n = c->resp_len - off;
  fprintf(stderr, "h2c-txid %.*s\n", (int)n, (const char *)c->resp + off);
}

static int on_close(nghttp2_session *s, int32_t id, uint32_t error_code, void *u) {
  (void)u;
  struct call *c = nghttp2_session_get_stream_user_data(s, id);
  if (!c) return 0;
  int64_t t = now_us() - c->t0_us;
  if (error_code == 0 && c->status == 200 && strcmp(c->grpc_status, "0") == 0 && c->received > 5) {
    ok++;
    if (lat_n == lat_cap) {
      lat_cap = lat_cap ? lat_cap * 2 : 1 << 16;
      lat = realloc(lat, lat_cap * sizeof *lat);
      if (!lat) fail("out of memory");
    }
    lat[lat_n++] = (uint32_t)(t > 0xffffffffLL ? 0xffffffffLL : t);
    if (debug_left > 0 && c->is_deduct) {
      debug_left--;
      print_txid(c);
    }
  } else {
    bad++;
    if (error_code != 0)
      snprintf(last_bad, sizeof last_bad, "stream reset: %s (HTTP %d)", nghttp2_http2_strerror(error_code), c->status);
    else if (c->grpc_status[0] == 0)
      snprintf(last_bad, sizeof last_bad, "stream closed without trailers (HTTP %d)", c->status);
    else if (c->status == 200 && strcmp(c->grpc_status, "0") == 0)
      snprintf(last_bad, sizeof last_bad, "grpc-status 0 (HTTP 200) without a message (%zu bytes)", c->received);
    else
      snprintf(last_bad, sizeof last_bad, "grpc-status %s (HTTP %d): %s", c->grpc_status, c->status, c->grpc_message);
  }
  nghttp2_session_set_stream_user_data(s, id, NULL);
  free(c);
  inflight--;
  return 0;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

/* as bench/deduct.ts's percentile(): sorted[floor(p/100 * n)] */
static uint32_t pct(double p) {
  if (lat_n == 0) return 0;
  size_t i = (size_t)(p / 100 * (double)lat_n);
  return lat[i < lat_n ? i : lat_n - 1];
}

static int connect_to(const char *host, const char *port) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res, *r;
  int rc = getaddrinfo(host, port, &hints, &res);
  if (rc != 0) fail(gai_strerror(rc));
  int fd = -1;
  for (r = res; r; r = r->ai_next) {
    fd = socket(r->ai_family, r->ai_socktype, r->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, r->ai_addr, r->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) fail("cannot connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--check") == 0) {
    printf("h2c-grpc nghttp2 %s\n", nghttp2_version(0)->version_str);
    return 0;
  }
  if (argc != 9 && argc != 10) {
    fprintf(stderr, "usage: %s HOST PORT spread|hot|echo TOKEN PREFIX ACCOUNTS CONCURRENCY SECONDS [RATE]\n", argv[0]);
    return 2;
  }
  const char *host = argv[1], *port = argv[2], *mode = argv[3];
  mode_hot = strcmp(mode, "hot") == 0;
  mode_echo = strcmp(mode, "echo") == 0;
  if (!mode_hot && !mode_echo && strcmp(mode, "spread") != 0) fail("MODE: spread, hot or echo");
  mode_path = mode_echo ? "/billing.v1.DiagnosticsService/Echo" : "/billing.v1.CreditService/DeductCredits";
  snprintf(auth_header, sizeof auth_header, "Bearer %s", argv[4]);
  prefix = argv[5];
  if (strlen(prefix) > 200) fail("PREFIX too long");
  accounts = (unsigned)atoi(argv[6]);
  unsigned concurrency = (unsigned)atoi(argv[7]);
  double seconds = atof(argv[8]);
  if (accounts == 0 || concurrency == 0 || seconds <= 0) fail("ACCOUNTS, CONCURRENCY and SECONDS must be positive");
  /* paced: `total` calls, call n due at t_start + n / rate */
  double rate = argc == 10 ? atof(argv[9]) : 0;
  if (argc == 10 && !(rate > 0)) fail("RATE must be positive");
  uint64_t total = rate > 0 ? (uint64_t)(rate * seconds) : 0;
  if (rate > 0 && total == 0) total = 1;
  snprintf(authority, sizeof authority, "%s:%s", host, port);
  const char *dbg = getenv("H2C_DEBUG");
  debug_left = dbg ? atoi(dbg) : 0;

  int fd = connect_to(host, port);
  nghttp2_session_callbacks *cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
  nghttp2_session *s;
  if (nghttp2_session_client_new(&s, cbs, NULL) != 0) fail("nghttp2_session_client_new");
  nghttp2_session_callbacks_del(cbs);
  nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
  nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, settings, 1);

  struct rusage ru0;
  getrusage(RUSAGE_SELF, &ru0);
  int64_t t_start = now_us();
  int64_t deadline = t_start + (int64_t)(seconds * 1e6);
  int running = 1;
#define DUE(n) (t_start + (int64_t)((double)(n) * 1e6 / rate))
  if (rate > 0) {
    deadline = DUE(total - 1); /* the last call's due time; then the drain */
  } else {
    for (unsigned i = 0; i < concurrency; i++) start_call(s, now_us());
  }

  static uint8_t rbuf[65536];
  /* nghttp2 hands out one frame at a time: gather them, so that a call's
   * HEADERS and DATA (and whatever else is due) go out in one write() */
  static uint8_t wbuf[65536];
  size_t wbuf_off = 0, wbuf_len = 0; /* bytes gathered that the socket did not take yet */
  const uint8_t *frame = NULL;       /* a frame from nghttp2 that did not fit into wbuf yet */
  ssize_t frame_len = 0;
  for (;;) {
    int64_t now = now_us();
    if (rate > 0) {
      /* open loop: start every call that is due, dated from its due time */
      while (started < total && inflight < PACED_MAX_INFLIGHT && DUE(started) <= now) {
        if (now - DUE(started) > max_start_lag) max_start_lag = now - DUE(started);
        start_call(s, DUE(started));
      }
      if (started >= total) running = 0;
    } else if (running && now >= deadline) {
      running = 0;
    }
    if (!running && inflight == 0) break;
    if (now >= deadline + DRAIN_SECONDS * 1000000LL) {
      uint64_t lost = inflight + (rate > 0 ? total - started : 0);
      bad += lost;
      snprintf(last_bad, sizeof last_bad, "%llu calls still in flight (or not started) %d s after the end", (unsigned long long)lost, DRAIN_SECONDS);
      break;
    }
    /* closed loop: replace the calls that ended */
    if (running && rate == 0)
      while (inflight < concurrency) start_call(s, now_us());
    /* write what nghttp2 has */
    int blocked = 0;
    for (;;) {
      if (wbuf_off == wbuf_len) wbuf_off = wbuf_len = 0;
      for (;;) {
        if (frame_len == 0) {
          frame_len = nghttp2_session_mem_send(s, &frame);
          if (frame_len < 0) fail(nghttp2_strerror((int)frame_len));
          if (frame_len == 0) break;
        }
        size_t room = sizeof wbuf - wbuf_len;
        size_t n = (size_t)frame_len < room ? (size_t)frame_len : room;
        if (n == 0) break;
        memcpy(wbuf + wbuf_len, frame, n);
        wbuf_len += n;
        frame += n;
        frame_len -= (ssize_t)n;
      }
      if (wbuf_off == wbuf_len) break;
      ssize_t w = write(fd, wbuf + wbuf_off, wbuf_len - wbuf_off);
      if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          blocked = 1;
          break;
        }
        if (errno == EINTR) continue;
        fail("write failed");
      }
      wbuf_off += (size_t)w;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN | (blocked ? POLLOUT : 0)};
    /* sleep until the socket, the next due call (paced), the end, or the drain's end */
    int64_t wake = running ? deadline : deadline + DRAIN_SECONDS * 1000000LL;
    if (rate > 0 && started < total && inflight < PACED_MAX_INFLIGHT) wake = DUE(started);
    int64_t wait_us = wake - now_us();
    if (wait_us > 1000000) wait_us = 1000000;
    if (wait_us < 0) wait_us = 0;
    struct timespec ts = {.tv_sec = wait_us / 1000000, .tv_nsec = (wait_us % 1000000) * 1000};
    int rc = ppoll(&p, 1, &ts, NULL);
    if (rc < 0 && errno != EINTR) fail("poll failed");
    if (rc > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
      for (;;) {
        ssize_t r = read(fd, rbuf, sizeof rbuf);
        if (r > 0) {
          ssize_t used = nghttp2_session_mem_recv(s, rbuf, (size_t)r);
          if (used < 0) fail(nghttp2_strerror((int)used));
          if (r < (ssize_t)sizeof rbuf) break;
          continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (r < 0 && errno == EINTR) continue;
        /* the server closed the connection: every call in flight failed */
        bad += inflight;
        snprintf(last_bad, sizeof last_bad, "connection closed by the server with %u calls in flight", inflight);
        inflight = 0;
        running = 0;
        if (rate > 0) {
          bad += total - started; /* the calls never started fail too */
          started = total;
        }
        break;
      }
      if (inflight == 0 && !running) break;
    }
  }
  int64_t t_end = now_us(); /* as drive(): the run ends when its last call does */
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)(ru.ru_utime.tv_sec - ru0.ru_utime.tv_sec) + (double)(ru.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
               ((double)(ru.ru_utime.tv_usec - ru0.ru_utime.tv_usec) + (double)(ru.ru_stime.tv_usec - ru0.ru_stime.tv_usec)) / 1e6;
  qsort(lat, lat_n, sizeof *lat, cmp_u32);
  printf("h2c-ok %llu\n", (unsigned long long)ok);
  printf("h2c-bad %llu\n", (unsigned long long)bad);
  printf("h2c-duration-us %lld\n", (long long)(t_end - t_start));
  printf("h2c-p50-us %u\n", pct(50));
  printf("h2c-p99-us %u\n", pct(99));
  printf("h2c-cpu-s %.4f\n", cpu);
  if (rate > 0) printf("h2c-max-start-lag-us %lld\n", (long long)max_start_lag);
  if (bad > 0) {
    for (char *q = last_bad; *q; q++)
      if (*q == '\r' || *q == '\n') *q = ' ';
    printf("h2c-last-bad %s\n", last_bad);
  }
  /* a polite goodbye; the process ends anyway */
  nghttp2_session_terminate_session(s, NGHTTP2_NO_ERROR);
  const uint8_t *out;
  ssize_t n;
  while ((n = nghttp2_session_mem_send(s, &out)) > 0)
    if (write(fd, out, (size_t)n) < 0) break;
  nghttp2_session_del(s);
  close(fd);
  return 0;
}
