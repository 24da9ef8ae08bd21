/**
 * Request ids and trace context: every answer (OK or error, Connect or gRPC)
 * carries `x-request-id`; a sane one sent by the caller is echoed, a
 * malformed one replaced; the call's log line carries request_id and the
 * trace id of a W3C traceparent; no log line ever holds a bearer token.
 * Runs a second app whose logger captures its lines.
 */
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import { randomBytes, randomUUID } from "node:crypto";
import http2 from "node:http2";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { createApp } from "../../src/app.js";
import { createLogger } from "../../src/logger.js";
import type { BillingServer } from "../../src/server.js";
import { TOKENS, harness, key, newAccount } from "../harness.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** A token no key has: sent on refused calls, must never be logged either. */
const BOGUS_TOKEN = `tok_ops_bogus_${randomUUID().replace(/-/g, "")}`;

describe("operations: request ids and trace context", function () {
  this.timeout(30_000);
  let app: BillingServer | undefined;
  let baseUrl = "";
  let grpc: Client<typeof CreditService>;
  const lines: string[] = [];
  const account = newAccount("reqid");

  before(async () => {
    app = createApp(harness().config, harness().sequelize, createLogger("debug", (line) => lines.push(line)));
    const port = await app.listen(0, "127.0.0.1");
    baseUrl = `http://127.0.0.1:${port}`;
    grpc = createClient(CreditService, createGrpcTransport({ baseUrl }));
  });

  after(async () => {
    await app?.close(2_000);
  });

  /** A Connect JSON unary call over fetch (HTTP/1.1). */
  async function connectCall(method: string, body: unknown, headers: Record<string, string> = {}) {
    const res = await fetch(`${baseUrl}/billing.v1.CreditService/${method}`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${TOKENS.service}`, ...headers },
      body: typeof body === "string" ? body : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, requestId: res.headers.get("x-request-id"), body: text };
  }

  /** A gRPC GetBalance through connect-node; the x-request-id of its response headers (or error metadata). */
  async function grpcGetBalance(headers: Record<string, string>): Promise<{ requestId: string | null; error?: ConnectError }> {
    let requestId: string | null = null;
    try {
      await grpc.getBalance({ accountId: account }, { headers, onHeader: (h) => (requestId = h.get("x-request-id")) });
      return { requestId };
    } catch (e) {
      if (!(e instanceof ConnectError)) throw e;
      return { requestId: e.metadata.get("x-request-id") ?? requestId, error: e };
    }
  }

  /** The captured JSON log lines. */
  const logLines = () => lines.map((l) => JSON.parse(l) as Record<string, unknown>);

  describe("every answer carries x-request-id", () => {
    it("a Connect JSON call over HTTP/1.1 gets a generated id, a fresh one per call", async () => {
      const a = await connectCall("GetBalance", { accountId: account });
      const b = await connectCall("GetBalance", { accountId: account });
      expect(a.status).to.equal(200);
      expect(a.requestId, "x-request-id on a Connect answer").to.match(UUID);
      expect(b.requestId).to.match(UUID);
      expect(a.requestId).to.not.equal(b.requestId);
    });

    it("a gRPC call over HTTP/2 gets a generated id in its response headers", async () => {
      const a = await grpcGetBalance({ authorization: `Bearer ${TOKENS.service}` });
      const b = await grpcGetBalance({ authorization: `Bearer ${TOKENS.service}` });
      expect(a.error).to.equal(undefined);
      expect(a.requestId, "x-request-id in the gRPC response headers").to.match(UUID);
      expect(b.requestId).to.match(UUID);
      expect(a.requestId).to.not.equal(b.requestId);
    });

    it("a gRPC server stream (WatchBalance) gets one in its response headers", async () => {
      const abort = new AbortController();
      let requestId: string | null = null;
      const stream = grpc.watchBalance({ accountId: account }, { headers: { authorization: `Bearer ${TOKENS.service}` }, signal: abort.signal, onHeader: (h) => (requestId = h.get("x-request-id")) });
      try {
        for await (const m of stream) {
          expect(m.balance?.accountId).to.equal(account);
          break;
        }
      } finally {
        abort.abort();
      }
      expect(requestId, "x-request-id on the stream's headers").to.match(UUID);
    });

    it("error answers carry it: UNAUTHENTICATED, INVALID_ARGUMENT and FAILED_PRECONDITION over Connect", async () => {
      const noAuth = await fetch(`${baseUrl}/billing.v1.CreditService/GetBalance`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ accountId: account }) });
      await noAuth.text();
      expect(noAuth.status).to.equal(401);
      expect(noAuth.headers.get("x-request-id"), "on UNAUTHENTICATED").to.match(UUID);

      const bogus = await connectCall("GetBalance", { accountId: account }, { authorization: `Bearer ${BOGUS_TOKEN}` });
      expect(bogus.status).to.equal(401);
      expect(bogus.requestId, "on a refused token").to.match(UUID);

      const invalid = await connectCall("GrantCredits", { accountId: account, amount: "0", type: "CREDIT_TRANSACTION_TYPE_PURCHASE", idempotencyKey: key() });
      expect(invalid.status).to.equal(400);
      expect(invalid.requestId, "on INVALID_ARGUMENT").to.match(UUID);

      const broke = await connectCall("DeductCredits", { accountId: newAccount("broke"), operationType: "clustering", usage: { credits: "5" }, idempotencyKey: key() });
      expect(broke.status).to.equal(400);
      expect(broke.body).to.include("failed_precondition");
      expect(broke.requestId, "on FAILED_PRECONDITION").to.match(UUID);
    });

    it("error answers carry it over gRPC (UNAUTHENTICATED and INVALID_ARGUMENT)", async () => {
      const noAuth = await grpcGetBalance({});
      expect(noAuth.error?.code).to.equal(Code.Unauthenticated);
      expect(noAuth.requestId, "on UNAUTHENTICATED").to.match(UUID);
      let invalid: ConnectError | undefined;
      try {
        await grpc.grantCredits({ accountId: account, amount: 0n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() }, { headers: { authorization: `Bearer ${TOKENS.service}` } });
      } catch (e) {
        invalid = e as ConnectError;
      }
      expect(invalid?.code).to.equal(Code.InvalidArgument);
      expect(invalid!.metadata.get("x-request-id"), "on INVALID_ARGUMENT").to.match(UUID);
    });

    it("an answer to a body that is not the request message (malformed JSON) carries it too, echoing a sane caller id", async () => {
      const res = await connectCall("GetBalance", '{"accountId": ');
      expect(res.status).to.equal(400);
      expect(res.requestId, `x-request-id on the 400 for a malformed body (body: ${res.body})`).to.match(UUID);
      const sent = `ops-badbody-${randomUUID()}`;
      const echoed = await connectCall("GetBalance", '{"accountId": ', { "x-request-id": sent });
      expect(echoed.status).to.equal(400);
      expect(echoed.requestId).to.equal(sent);
    });

    it("a gRPC call whose message does not parse (raw HTTP/2) is answered with an x-request-id too", async () => {
      const session = http2.connect(baseUrl);
      session.on("error", () => {});
      try {
        const stream = session.request({ ":method": "POST", ":path": "/billing.v1.CreditService/GetBalance", "content-type": "application/grpc", te: "trailers", authorization: `Bearer ${TOKENS.service}` });
        stream.on("error", () => {});
        const meta: Record<string, unknown> = {};
        stream.on("response", (h) => Object.assign(meta, h));
        stream.on("trailers", (t) => Object.assign(meta, t));
        stream.on("data", () => {});
        // One envelope holding bytes that are not a GetBalanceRequest (a truncated length-delimited field).
        stream.end(Buffer.from([0, 0, 0, 0, 3, 0x0a, 0x7f, 0x61]));
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("no answer within 5 s")), 5_000);
          stream.once("close", () => (clearTimeout(timer), resolve()));
        });
        expect(meta["grpc-status"], JSON.stringify(meta)).to.equal(String(Code.InvalidArgument));
        expect(meta["x-request-id"], `x-request-id in the headers or trailers: ${JSON.stringify(meta)}`).to.match(UUID);
      } finally {
        session.close();
      }
    });
  });

  describe("the caller's x-request-id", () => {
    it("is echoed when sane, over Connect and gRPC", async () => {
      const sent = `ops-${randomUUID()}`;
      expect((await connectCall("GetBalance", { accountId: account }, { "x-request-id": sent })).requestId).to.equal(sent);
      const g = await grpcGetBalance({ authorization: `Bearer ${TOKENS.service}`, "x-request-id": sent });
      expect(g.requestId).to.equal(sent);
      // On an error answer as well.
      const bogus = await connectCall("GetBalance", { accountId: account }, { authorization: `Bearer ${BOGUS_TOKEN}`, "x-request-id": sent });
      expect(bogus.status).to.equal(401);
      expect(bogus.requestId).to.equal(sent);
    });

    it("is replaced with a generated one when malformed (300 characters, or with spaces)", async () => {
      const long = "a".repeat(300);
      const spaced = "not a sane id";
      for (const sent of [long, spaced]) {
        const c = await connectCall("GetBalance", { accountId: account }, { "x-request-id": sent });
        expect(c.status).to.equal(200);
        expect(c.requestId, `Connect, sent ${JSON.stringify(sent.slice(0, 20))}…`).to.match(UUID);
        const g = await grpcGetBalance({ authorization: `Bearer ${TOKENS.service}`, "x-request-id": sent });
        expect(g.requestId, `gRPC, sent ${JSON.stringify(sent.slice(0, 20))}…`).to.match(UUID);
      }
      // Nor does the malformed id reach the log.
      expect(lines.some((l) => l.includes(long))).to.equal(false);
      expect(lines.some((l) => l.includes(spaced))).to.equal(false);
    });
  });

  describe("log lines", () => {
    it("the call's log line has request_id and, with a traceparent, trace_id and parent_span_id (Connect and gRPC)", async () => {
      for (const protocol of ["connect", "grpc"] as const) {
        const traceId = randomBytes(16).toString("hex");
        const spanId = randomBytes(8).toString("hex");
        const requestId = `trace-${protocol}-${randomUUID()}`;
        const headers = { "x-request-id": requestId, traceparent: `00-${traceId}-${spanId}-01` };
        if (protocol === "connect") expect((await connectCall("GetBalance", { accountId: account }, headers)).requestId).to.equal(requestId);
        else expect((await grpcGetBalance({ authorization: `Bearer ${TOKENS.service}`, ...headers })).requestId).to.equal(requestId);
        const mine = logLines().filter((l) => l.request_id === requestId);
        expect(mine.length, `log lines with request_id ${requestId}`).to.be.at.least(1);
        const rpc = mine.find((l) => l.msg === "rpc");
        expect(rpc, `the rpc log line of the ${protocol} call`).to.not.equal(undefined);
        expect(rpc).to.include({ request_id: requestId, trace_id: traceId, parent_span_id: spanId, procedure: "/billing.v1.CreditService/GetBalance", protocol, code: "ok" });
        for (const l of mine) expect(l.trace_id, `every line of the call: ${JSON.stringify(l)}`).to.equal(traceId);
      }
    });

    it("a call without a traceparent (or a malformed one) logs a request_id and no trace_id", async () => {
      const requestId = `notrace-${randomUUID()}`;
      await connectCall("GetBalance", { accountId: account }, { "x-request-id": requestId, traceparent: "00-xyz-abc-01" });
      const rpc = logLines().find((l) => l.request_id === requestId && l.msg === "rpc");
      expect(rpc, "the rpc log line").to.not.equal(undefined);
      expect(rpc).to.not.have.property("trace_id");
    });

    it("every call has a log line with its generated request_id (the one answered)", async () => {
      const c = await connectCall("GetBalance", { accountId: account });
      expect(c.requestId).to.match(UUID);
      expect(logLines().some((l) => l.request_id === c.requestId && l.msg === "rpc")).to.equal(true);
      const bogus = await connectCall("GetBalance", { accountId: account }, { authorization: `Bearer ${BOGUS_TOKEN}` });
      const line = logLines().find((l) => l.request_id === bogus.requestId && l.msg === "rpc");
      expect(line, "the refused call's log line").to.include({ code: "unauthenticated" });
    });

    it("never contain a bearer token (valid or refused), on any line of this file's calls", async () => {
      // A few more calls with tokens in odd places: lower-case scheme, a token as x-request-id is not sent (it could be legitimately echoed).
      await connectCall("GetBalance", { accountId: account }, { authorization: `bearer ${BOGUS_TOKEN}` });
      await connectCall("GetBalance", { accountId: account }, { authorization: BOGUS_TOKEN });
      await grpcGetBalance({ authorization: `Bearer ${BOGUS_TOKEN}` });
      expect(lines.length, "lines captured").to.be.greaterThan(10);
      for (const token of [TOKENS.service, BOGUS_TOKEN]) {
        const leaking = lines.filter((l) => l.includes(token));
        expect(leaking, `log lines containing ${token}`).to.deep.equal([]);
      }
      expect(lines.filter((l) => /bearer\s+tok_/i.test(l))).to.deep.equal([]);
    });
  });
});

describe("operations: a caller that goes away is not an error of ours", () => {
  for (const protocol of ["grpc", "connect-http1", "grpc-web-http1"] as const)
  it(`logs no error-level line when a client cancels a WatchBalance stream (${protocol})`, async () => {
    const { createApp } = await import("../../src/app.js");
    const { createLogger } = await import("../../src/logger.js");
    const { createGrpcTransport, createConnectTransport, createGrpcWebTransport } = await import("@connectrpc/connect-node");
    const { createClient } = await import("@connectrpc/connect");
    const { CreditService } = await import("../../gen/billing/v1/credit_service_pb.js");
    const { harness, TOKENS, newAccount } = await import("../harness.js");
    const lines: string[] = [];
    const app = createApp(harness().config, harness().sequelize, createLogger("debug", (l) => lines.push(l)));
    const port = await app.listen(0, "127.0.0.1");
    try {
      const baseUrl = `http://127.0.0.1:${port}`;
      const transport =
        protocol === "grpc"
          ? createGrpcTransport({ baseUrl })
          : protocol === "connect-http1"
            ? createConnectTransport({ baseUrl, httpVersion: "1.1" })
            : createGrpcWebTransport({ baseUrl, httpVersion: "1.1" });
      const credits = createClient(CreditService, transport);
      const abort = new AbortController();
      const account = newAccount("cancel");
      const stream = credits.watchBalance({ accountId: account }, { signal: abort.signal, headers: { authorization: `Bearer ${TOKENS.service}` } });
      let first = false;
      try {
        for await (const _ of stream) {
          first = true;
          abort.abort();
        }
      } catch {
        // the cancel itself
      }
      expect(first, "the stream answered once before the cancel").to.equal(true);
      // Balance changes right after the cancel: the server writes to a stream whose caller left.
      const admin = createClient(CreditService, transport);
      for (let i = 0; i < 5; i++) {
        await admin.grantCredits({ accountId: account, amount: 1n, type: 5 /* ADJUSTMENT */, idempotencyKey: `${account}-${i}` }, { headers: { authorization: `Bearer ${TOKENS.admin}` } });
      }
      await new Promise((r) => setTimeout(r, 300));
      const errors = lines.map((l) => JSON.parse(l) as { level: string }).filter((l) => l.level === "error");
      expect(errors, lines.join("\n")).to.deep.equal([]);
      expect(lines.some((l) => l.includes('"procedure":"/billing.v1.CreditService/WatchBalance"'))).to.equal(true);
    } finally {
      await app.close(1_000);
    }
  });
});
