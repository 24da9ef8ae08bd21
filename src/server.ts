/**
 * One port, three protocols.
 *
 * A plain TCP server peeks at each connection's first bytes: the HTTP/2
 * preface goes to an h2c server (gRPC, and Connect/gRPC-Web over HTTP/2),
 * anything else to an HTTP/1.1 server (Connect and gRPC-Web). Both use the
 * same Connect adapter. Plain HTTP routes (webhooks) are served beside it.
 *
 * Shutdown (graceful drain): the lifecycle turns `draining` first (health
 * and /readyz say NOT_SERVING, new calls are refused with UNAVAILABLE,
 * HTTP/1.1 answers carry `Connection: close`), the listener stops accepting,
 * HTTP/2 sessions get GOAWAY, idle keep-alive sockets are closed, streams
 * end with UNAVAILABLE, in-flight calls finish and are answered; whatever is
 * left after the grace period is cut. The caller closes the database last.
 */
import { cors as connectCors, type ConnectRouter, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import http from "node:http";
import http2 from "node:http2";
import { setMaxListeners } from "node:events";
import net from "node:net";
import { createUnaryPath } from "./unary.js";
import type { Logger } from "./logger.js";

/** A plain HTTP route beside the RPCs (provider webhooks, probes, metrics). */
export type HttpRoute = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => void | Promise<void>;

/** A plain route's handler and the one method it answers. */
export interface PlainRoute {
  method: "GET" | "POST";
  handle: HttpRoute;
}

/** Shared by the server and what it serves: whether the server is draining. */
export interface Lifecycle {
  draining: boolean;
}

export interface ServerOptions {
  routes: (router: ConnectRouter) => void;
  interceptors: Interceptor[];
  /** Exact origins allowed by CORS; "*" allows any. */
  corsOrigins: string[];
  /** Plain HTTP routes by exact path. */
  httpRoutes?: Record<string, PlainRoute>;
  /** Set to draining when close() starts; read by health, probes and the interceptors. */
  lifecycle?: Lifecycle;
  logger: Logger;
  /** Timeouts and the connection cap; defaults in DEFAULT_SERVER_LIMITS. */
  limits?: ServerLimits;
  /** false sends unary calls through connect-node too (UNARY_FAST_PATH=off, for diagnosis). */
  unaryFastPath?: boolean;
}

/**
 * What a connection may hold of the server (README, "Configuration"): a
 * client that stalls is closed, and a flood of connections is capped.
 */
export interface ServerLimits {
  /** From accept to the end of the request headers (protocol sniff included); HEADERS_TIMEOUT_MS. */
  headersTimeoutMs: number;
  /** An idle HTTP/1.1 keep-alive connection or HTTP/2 session is closed after this; IDLE_TIMEOUT_MS. */
  idleTimeoutMs: number;
  /** A request body must arrive within this (or the call's deadline, if sooner); BODY_TIMEOUT_MS. */
  bodyTimeoutMs: number;
  /** Connections beyond this many are refused at accept; MAX_CONNECTIONS. */
  maxConnections: number;
}

export const DEFAULT_SERVER_LIMITS: ServerLimits = {
  headersTimeoutMs: 10_000,
  idleTimeoutMs: 60_000,
  bodyTimeoutMs: 30_000,
  maxConnections: 10_000,
};

export interface BillingServer {
  /** Starts listening; resolves with the bound port (useful with port 0). */
  listen(port: number, host: string): Promise<number>;
  /** Graceful shutdown: in-flight calls get up to `graceMs` to finish. */
  close(graceMs?: number): Promise<void>;
}

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/** How long a drain leaves idle keep-alive sockets open, once in-flight calls are answered. */
const DRAIN_LINGER_MS = 500;

/** Builds the server; nothing listens until `listen`. */
export function createBillingServer(options: ServerOptions): BillingServer {
  const shutdown = new AbortController();
  setMaxListeners(0, shutdown.signal); // every in-flight call listens for shutdown
  const { logger } = options;
  const limits = options.limits ?? DEFAULT_SERVER_LIMITS;
  const fastPath = options.unaryFastPath ?? true;
  const readMaxBytes = 4 * 1024 * 1024;
  // Unary calls take a leaner path built from connect's own pieces
  // (unary.ts), which also reads their input strictly; every other call
  // (streams, Connect GET) goes through the Connect adapter.
  const unary = createUnaryPath({ interceptors: options.interceptors, readMaxBytes, bodyTimeoutMs: limits.bodyTimeoutMs });
  const adapter = connectNodeAdapter({
    routes: unary.recordRoutes(options.routes),
    interceptors: options.interceptors,
    shutdownSignal: shutdown.signal,
    jsonOptions: { alwaysEmitImplicit: true, ignoreUnknownFields: false },
    readMaxBytes,
    fallback: (_req, res) => notFound(res as http.ServerResponse),
  });

  const lifecycle = options.lifecycle ?? { draining: false };
  // Requests being served, so that a drain can wait for them.
  let inFlight = 0;
  const handle = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => {
    inFlight++;
    res.once("close", () => inFlight--);
    if (lifecycle.draining && !("stream" in req)) res.setHeader("connection", "close");
    if (!applyCors(req, res, options.corsOrigins)) return;
    if ("stream" in req && !req.complete) {
      // HTTP/1.1 bodies are bounded by requestTimeout; HTTP/2 ones here (the unary path also bounds its own).
      const stalled = setTimeout(() => req.complete || req.stream.close(http2.constants.NGHTTP2_CANCEL), limits.bodyTimeoutMs);
      req.once("end", () => clearTimeout(stalled)).once("close", () => clearTimeout(stalled));
    }
    const path = (req.url ?? "/").split("?")[0]!;
    const route = options.httpRoutes?.[path];
    if (route) {
      if (req.method !== route.method) {
        res.writeHead(405, { allow: route.method, "content-type": "application/json" });
        res.end(JSON.stringify({ error: "method not allowed" }));
        return;
      }
      Promise.resolve(route.handle(req, res)).catch((err: unknown) => {
        logger.error("http route failed", { path, error: err instanceof Error ? err.message : String(err) });
        if (!res.headersSent) res.writeHead(500, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: "internal error" }));
      });
      return;
    }
    if (fastPath && unary.handle(req, res)) return;
    adapter(req as never, res as never);
  };

  const h1 = http.createServer(
    {
      keepAliveTimeout: limits.idleTimeoutMs,
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.headersTimeoutMs + limits.bodyTimeoutMs,
      connectionsCheckingInterval: Math.max(100, Math.min(1_000, limits.headersTimeoutMs / 4)),
    },
    handle,
  );
  // Node checks headersTimeout/requestTimeout from a timer it starts when the
  // server starts listening; h1 never listens (connections arrive from the
  // sniffing server below), so start that tracking the same way.
  h1.emit("listening");
  const h2 = http2.createServer({}, handle);
  // An HTTP/2 session with no frames for this long and no stream open (a
  // stalled or idle client) is closed; a quiet WatchBalance stream keeps it.
  const openStreams = new WeakMap<http2.Http2Session, number>();
  h2.on("stream", (stream) => {
    const session = stream.session;
    if (!session) return;
    openStreams.set(session, (openStreams.get(session) ?? 0) + 1);
    stream.once("close", () => openStreams.set(session, (openStreams.get(session) ?? 1) - 1));
  });
  h2.setTimeout(limits.idleTimeoutMs);
  h2.on("timeout", (session: http2.Http2Session) => {
    if ((openStreams.get(session) ?? 0) === 0) session.destroy();
  });
  const sockets = new Set<net.Socket>();
  const sessions = new Set<http2.Http2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });

  const tcp = net.createServer((socket) => {
    // Answers are small and latency-bound: no Nagle delay (http.createServer
    // would set this itself, but connections arrive here first).
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    socket.once("error", () => socket.destroy());
    // Wait for enough bytes to tell HTTP/2 from HTTP/1, but not forever.
    const sniffTimer = setTimeout(() => socket.destroy(), limits.headersTimeoutMs);
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const n = Math.min(head.length, H2_PREFACE.length);
      const isH2 = head.subarray(0, n).equals(H2_PREFACE.subarray(0, n));
      if (isH2 && head.length < H2_PREFACE.length) return; // need more bytes
      socket.off("data", onData);
      clearTimeout(sniffTimer);
      socket.pause();
      socket.unshift(head);
      if (isH2) {
        // http2 reads what is already buffered on the next tick; resuming
        // here would spill it as 'data' events nobody listens to.
        h2.emit("connection", socket);
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.once("close", () => clearTimeout(sniffTimer));
  });
  tcp.maxConnections = limits.maxConnections;

  return {
    listen(port, host) {
      return new Promise((resolve, reject) => {
        tcp.once("error", reject);
        tcp.listen(port, host, () => {
          tcp.off("error", reject);
          resolve((tcp.address() as net.AddressInfo).port);
        });
      });
    },
    async close(graceMs = 10_000) {
      lifecycle.draining = true; // health NOT_SERVING, new calls UNAVAILABLE, HTTP/1.1 answers say Connection: close
      const closed = new Promise<void>((resolve) => tcp.close(() => resolve()));
      // GOAWAY: running streams finish; one a client opened as it arrived is
      // refused (REFUSED_STREAM: not processed, safe to retry).
      for (const session of sessions) session.close();
      shutdown.abort(); // ends server streams (WatchBalance, health Watch) with UNAVAILABLE
      const deadline = Date.now() + graceMs;
      const tick = () => new Promise((r) => setTimeout(r, 20));
      // In-flight calls finish and are answered (each HTTP/1.1 answer says Connection: close).
      while (inFlight > 0 && Date.now() < deadline) await tick();
      // Idle keep-alive sockets are not cut at once: a client may be sending
      // on one right now, and would see a reset. For a moment a request on
      // one is still answered (UNAVAILABLE, Connection: close); then they go.
      const linger = Math.min(deadline, Date.now() + DRAIN_LINGER_MS);
      while (sockets.size > 0 && Date.now() < linger) await tick();
      h1.closeIdleConnections();
      while (sockets.size > 0 && inFlight > 0 && Date.now() < deadline) await tick();
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

function notFound(res: http.ServerResponse) {
  res.writeHead(404, { "content-type": "application/json" });
  res.end(JSON.stringify({ code: "not_found", message: "no such route" }));
}

/**
 * Applies CORS for Connect-Web callers. Returns false when the request was a
 * preflight and has been answered.
 */
function applyCors(req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse, origins: string[]): boolean {
  const origin = req.headers.origin;
  const allowed = typeof origin === "string" && (origins.includes("*") || origins.includes(origin));
  if (allowed) {
    res.setHeader("access-control-allow-origin", origins.includes("*") ? "*" : origin);
    res.setHeader("vary", "Origin");
    res.setHeader("access-control-expose-headers", [...connectCors.exposedHeaders].join(", "));
  }
  if (req.method === "OPTIONS" && req.headers["access-control-request-method"]) {
    if (allowed) {
      res.setHeader("access-control-allow-methods", [...connectCors.allowedMethods].join(", "));
      res.setHeader("access-control-allow-headers", [...connectCors.allowedHeaders, "Authorization"].join(", "));
      res.setHeader("access-control-max-age", "7200");
      res.writeHead(204);
    } else {
      res.writeHead(403);
    }
    res.end();
    return false;
  }
  return true;
}
