/**
 * Stalled connections are closed: a second server with short limits
 * (Config.serverLimits) must drop sockets that send nothing, half a preface,
 * half the headers or half a body, and idle HTTP/1.1 keep-alive and HTTP/2
 * connections; with a connection cap it keeps serving once a flood is gone.
 * Every wait is bounded (a few seconds).
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import net from "node:net";
import http2 from "node:http2";
import { CreditService } from "../../gen/billing/v1/credit_service_pb.js";
import { createApp } from "../../src/app.js";
import type { Config } from "../../src/config.js";
import { createLogger } from "../../src/logger.js";
import type { BillingServer } from "../../src/server.js";
import { ACCOUNT_A, TOKENS, harness } from "../harness.js";
import { sleep } from "./raw.js";

const LIMITS = { headersTimeoutMs: 500, idleTimeoutMs: 800, bodyTimeoutMs: 700, maxConnections: 20 };
/** How long past a limit the server may take to act on it. */
const MARGIN_MS = 2_500;

/** The Config with the serverLimits field this file relies on. */
type LimitedConfig = Config & { serverLimits?: typeof LIMITS };

interface Outcome {
  /** Milliseconds from the start until the server closed the socket. */
  closedAfterMs: number;
  /** What the server sent before closing. */
  received: string;
}

/** Resolves when the server ends or closes `socket`; rejects if it is still open after `withinMs`. */
function closedBy(socket: net.Socket, withinMs: number, started = performance.now()): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      resolve({ closedAfterMs: performance.now() - started, received: Buffer.concat(chunks).toString("latin1") });
    };
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server kept the connection open for ${withinMs} ms (received ${JSON.stringify(Buffer.concat(chunks).toString("latin1").slice(0, 120))})`));
    }, withinMs);
    socket.on("data", (c: Buffer) => chunks.push(c));
    socket.once("end", done);
    socket.once("close", done);
    socket.once("error", done);
  });
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1", () => resolve(s));
    s.once("error", reject);
  });
}

describe("hostile input: stalled connections are closed (serverLimits)", function () {
  this.timeout(20_000);
  let server: BillingServer | undefined;
  let port = 0;
  let baseUrl = "";

  before(async () => {
    const { config, sequelize } = harness();
    const limited: LimitedConfig = { ...config, serverLimits: LIMITS };
    server = createApp(limited, sequelize, createLogger("silent"));
    port = await server.listen(0, "127.0.0.1");
    baseUrl = `http://127.0.0.1:${port}`;
  });

  after(async () => {
    await server?.close(1_000);
  });

  /** GetBalance answers over Connect JSON (HTTP/1.1) and gRPC (HTTP/2) on the limited server. */
  async function expectServing() {
    for (const transport of [createConnectTransport({ baseUrl, httpVersion: "1.1" }), createGrpcTransport({ baseUrl })]) {
      const c = createClient(CreditService, transport);
      const res = await c.getBalance({ accountId: ACCOUNT_A }, { headers: { authorization: `Bearer ${TOKENS.service}` }, timeoutMs: 5_000 });
      expect(res.balance?.accountId).to.equal(ACCOUNT_A);
    }
  }

  it("serves normal calls with the short limits", async () => {
    await expectServing();
  });

  it("closes a connection that sends nothing, within the headers timeout", async () => {
    const s = await connect(port);
    const o = await closedBy(s, LIMITS.headersTimeoutMs + MARGIN_MS);
    expect(o.closedAfterMs).to.be.below(LIMITS.headersTimeoutMs + MARGIN_MS);
  });

  it("closes a connection that sends half the HTTP/2 preface and stops", async () => {
    const s = await connect(port);
    const started = performance.now();
    s.write("PRI * HTTP/2.0\r\n");
    await closedBy(s, LIMITS.headersTimeoutMs + MARGIN_MS, started);
  });

  it("closes an HTTP/1.1 connection that stops in the middle of its headers", async () => {
    const s = await connect(port);
    const started = performance.now();
    s.write("POST /x HTTP/1.1\r\nHost: a\r\n");
    const o = await closedBy(s, LIMITS.headersTimeoutMs + MARGIN_MS, started);
    // Node may answer 408 first; anything else would be a wrong answer.
    if (o.received !== "") expect(o.received).to.match(/^HTTP\/1\.1 408/);
  });

  it("closes an idle HTTP/1.1 keep-alive connection after one complete request", async () => {
    const s = await connect(port);
    const answered = new Promise<void>((resolve) => s.once("data", () => resolve()));
    const closed = closedBy(s, LIMITS.idleTimeoutMs + MARGIN_MS + 1_000);
    s.write("GET /does-not-exist HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n");
    await answered;
    const idleFrom = performance.now();
    const o = await closed;
    expect(o.received).to.match(/^HTTP\/1\.1 4\d\d/);
    expect(performance.now() - idleFrom, "closed within the idle timeout").to.be.below(LIMITS.idleTimeoutMs + MARGIN_MS);
  });

  it("closes an idle HTTP/2 session that opens no stream", async () => {
    const session = http2.connect(baseUrl);
    session.on("error", () => {});
    try {
      await new Promise<void>((resolve, reject) => {
        session.once("connect", () => resolve());
        session.once("error", reject);
      });
      const started = performance.now();
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`the idle HTTP/2 session is still open after ${LIMITS.idleTimeoutMs + MARGIN_MS} ms`)), LIMITS.idleTimeoutMs + MARGIN_MS);
        const done = () => {
          clearTimeout(timer);
          resolve();
        };
        session.once("goaway", done);
        session.once("close", done);
      });
      expect(performance.now() - started).to.be.below(LIMITS.idleTimeoutMs + MARGIN_MS);
    } finally {
      session.destroy();
    }
  });

  it("answers or closes an HTTP/1.1 unary call whose body never finishes (content-length 100, 10 bytes sent) within the body timeout", async () => {
    const s = await connect(port);
    const started = performance.now();
    const outcome = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer and no close ${LIMITS.bodyTimeoutMs + LIMITS.headersTimeoutMs + MARGIN_MS} ms after a stalled body`)), LIMITS.bodyTimeoutMs + LIMITS.headersTimeoutMs + MARGIN_MS);
      const done = (what: string) => {
        clearTimeout(timer);
        resolve(what);
      };
      s.once("data", (c: Buffer) => done(c.toString("latin1")));
      s.once("end", () => done("end"));
      s.once("close", () => done("close"));
    });
    s.write(
      "POST /billing.v1.CreditService/GetBalance HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n" +
        `Authorization: Bearer ${TOKENS.service}\r\nContent-Length: 100\r\n\r\n{"account`,
    );
    const what = await outcome;
    s.destroy();
    expect(performance.now() - started).to.be.below(LIMITS.bodyTimeoutMs + LIMITS.headersTimeoutMs + MARGIN_MS);
    // An answer, if any, is an error (e.g. 408, or 504 deadline_exceeded), never a 200 and never internal/unknown.
    if (what.startsWith("HTTP/")) {
      expect(what).to.not.match(/^HTTP\/1\.1 (200|500)/);
      expect(what).to.not.match(/"code":"(internal|unknown)"/);
    }
  });

  it("ends an HTTP/2 gRPC call whose request message never finishes within the body timeout", async () => {
    const session = http2.connect(baseUrl);
    session.on("error", () => {});
    try {
      const started = performance.now();
      const stream = session.request({ ":method": "POST", ":path": "/billing.v1.CreditService/GetBalance", "content-type": "application/grpc", te: "trailers", authorization: `Bearer ${TOKENS.service}` });
      stream.on("error", () => {});
      stream.on("data", () => {});
      // An envelope declaring 100 bytes, 3 of them sent, and the stream left open.
      stream.write(Buffer.from([0, 0, 0, 0, 100, 0x0a, 0x05, 0x61]));
      const status = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("the stalled gRPC call got no answer and is still open")), LIMITS.bodyTimeoutMs + MARGIN_MS);
        const done = (what: string) => {
          clearTimeout(timer);
          resolve(what);
        };
        stream.once("response", (h) => h["grpc-status"] !== undefined && done(String(h["grpc-status"])));
        stream.once("trailers", (t) => done(String(t["grpc-status"])));
        stream.once("close", () => done(`closed (rst code ${stream.rstCode})`));
      });
      expect(performance.now() - started).to.be.below(LIMITS.bodyTimeoutMs + MARGIN_MS);
      expect(status, "an answer is an error status, never OK, INTERNAL or UNKNOWN").to.not.be.oneOf(["0", "13", "2"]);
    } finally {
      session.destroy();
    }
  });

  it("keeps serving after 40 sockets flood a server capped at 20 connections and then go away", async () => {
    const sockets = await Promise.all(
      Array.from({ length: 40 }, () =>
        connect(port).then(
          (s) => {
            s.on("error", () => {});
            return s;
          },
          () => undefined,
        ),
      ),
    );
    await sleep(200);
    for (const s of sockets) s?.destroy();
    await sleep(100);
    await expectServing();
  });

  it("holds at most 20 connections open at once: of 40 sockets, the ones past the cap are closed at once", async () => {
    const sockets = await Promise.all(Array.from({ length: 40 }, () => connect(port).catch(() => undefined)));
    const closedEarly = new Set<net.Socket>();
    for (const s of sockets) {
      s?.on("error", () => {});
      s?.once("close", () => closedEarly.add(s));
      s?.once("end", () => closedEarly.add(s));
    }
    await sleep(250); // well before the 500 ms headers timeout
    const open = sockets.filter((s) => s && !closedEarly.has(s)).length;
    for (const s of sockets) s?.destroy();
    expect(open, "connections the server kept open").to.be.at.most(LIMITS.maxConnections);
    await sleep(100);
    await expectServing();
  });

  it("serves normal calls while silent sockets hold connections, once the headers timeout has freed them", async () => {
    const sockets = await Promise.all(Array.from({ length: LIMITS.maxConnections }, () => connect(port).catch(() => undefined)));
    for (const s of sockets) s?.on("error", () => {});
    // The silent sockets are dropped by the headers timeout, freeing the cap.
    const outcomes = await Promise.allSettled(sockets.map((s) => (s ? closedBy(s, LIMITS.headersTimeoutMs + MARGIN_MS) : Promise.resolve(undefined))));
    const stillOpen = outcomes.filter((o) => o.status === "rejected").length;
    for (const s of sockets) s?.destroy();
    expect(stillOpen, "silent sockets still open after the headers timeout").to.equal(0);
    await expectServing();
  });
});
