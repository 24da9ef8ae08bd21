/**
 * Corrupt request bodies on every path (Connect binary and JSON, gRPC-Web,
 * gRPC with and without compression, a server stream) are INVALID_ARGUMENT,
 * never INTERNAL or an HTTP 5xx, and the server keeps answering afterwards.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import { expect } from "chai";
import { brotliCompressSync, gzipSync } from "node:zlib";
import { CreditService, GetBalanceRequestSchema, WatchBalanceRequestSchema } from "../../gen/billing/v1/credit_service_pb.js";
import { ACCOUNT_A, TOKENS, client, harness } from "../harness.js";
import { connectError, describeH1, frame, grpcMessage, grpcStatus, grpcWebStatus, h1, h2, type H1Answer } from "./raw.js";
import http2 from "node:http2";

const GET_BALANCE = "/billing.v1.CreditService/GetBalance";
const WATCH_BALANCE = "/billing.v1.CreditService/WatchBalance";
const GARBAGE = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]);
const auth = { authorization: `Bearer ${TOKENS.service}` };
const validGetBalance = Buffer.from(toBinary(GetBalanceRequestSchema, create(GetBalanceRequestSchema, { accountId: ACCOUNT_A })));

/** GetBalance answers normally on two protocols: the server is healthy. */
async function expectHealthy() {
  for (const protocol of ["connect-json-http1", "grpc-http2"] as const) {
    const res = await client(CreditService, TOKENS.service, protocol).getBalance({ accountId: ACCOUNT_A });
    expect(res.balance?.accountId).to.equal(ACCOUNT_A);
  }
}

function expectConnectInvalid(a: H1Answer) {
  expect(a.status, describeH1(a)).to.equal(400);
  expect(connectError(a).code, describeH1(a)).to.equal("invalid_argument");
}

/** One HTTP/2 Connect (not gRPC) POST; the answer as an H1Answer-like record. */
async function connectH2(path: string, body: Buffer, contentType: string): Promise<H1Answer> {
  const a = await h2(path, body, { "content-type": contentType, ...auth });
  return { status: a.status, headers: a.headers as never, body: a.data };
}

describe("hostile input: corrupt request bodies", () => {
  afterEach(expectHealthy);

  describe("Connect binary", () => {
    it("refuses garbage bytes as a GetBalance request with 400 invalid_argument (HTTP/1.1)", async () => {
      expectConnectInvalid(await h1(GET_BALANCE, GARBAGE, { "content-type": "application/proto", ...auth }));
    });

    it("refuses garbage bytes as a GetBalance request with 400 invalid_argument (HTTP/2)", async () => {
      expectConnectInvalid(await connectH2(GET_BALANCE, GARBAGE, "application/proto"));
    });

    it("refuses a truncated valid message and a wrong wire type with 400 invalid_argument", async () => {
      // Field 1 (account_id) declared 40 bytes long, 3 present; field 1 as a varint.
      for (const body of [Buffer.from([0x0a, 0x28, 0x61, 0x62, 0x63]), Buffer.from([0x08, 0x01])]) {
        expectConnectInvalid(await h1(GET_BALANCE, body, { "content-type": "application/proto", ...auth }));
      }
    });
  });

  describe("Connect JSON", () => {
    const json = (body: Buffer | string) => h1(GET_BALANCE, body, { "content-type": "application/json", ...auth });

    it('refuses a body that is "not json" with 400 invalid_argument', async () => {
      expectConnectInvalid(await json("not json"));
    });

    it("refuses a UTF-8 byte-order mark before valid JSON with 400 invalid_argument", async () => {
      const valid = Buffer.from(JSON.stringify({ accountId: ACCOUNT_A }));
      expect((await json(valid)).status, "the same JSON without a BOM is fine").to.equal(200);
      expectConnectInvalid(await json(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), valid])));
    });

    it("refuses invalid UTF-8 bytes (C3 28) inside a JSON string with 400 invalid_argument", async () => {
      const body = Buffer.concat([Buffer.from('{"accountId":"acct'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]);
      expectConnectInvalid(await json(body));
    });

    it("refuses JSON that is not an object, truncated JSON and a trailing second value with 400 invalid_argument", async () => {
      for (const body of ["[]", '"acct_a"', "null", '{"accountId":"acct_a"', '{"accountId":"acct_a"}{}']) {
        const a = await json(body);
        expect(a.status, `${body}: ${describeH1(a)}`).to.equal(400);
        expect(connectError(a).code, body).to.equal("invalid_argument");
      }
    });
  });

  describe("gRPC-Web (HTTP/1.1)", () => {
    const grpcWeb = (body: Buffer, headers: Record<string, string> = {}) =>
      h1(GET_BALANCE, body, { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", ...auth, ...headers });

    it("answers an envelope with a garbage payload with grpc-status 3", async () => {
      const a = await grpcWeb(frame(GARBAGE));
      expect(a.status, describeH1(a)).to.be.below(500);
      const s = grpcWebStatus(a);
      expect(s.status, s.message).to.equal(3);
    });

    it("answers a compressed-flag envelope without grpc-encoding with grpc-status 3", async () => {
      const a = await grpcWeb(frame(validGetBalance, 0x01));
      expect(a.status, describeH1(a)).to.be.below(500);
      const s = grpcWebStatus(a);
      expect(s.status, s.message).to.equal(3);
    });

    it("answers a gzip envelope of garbage with grpc-status 3", async () => {
      const a = await grpcWeb(frame(gzipSync(GARBAGE), 0x01), { "grpc-encoding": "gzip" });
      expect(a.status, describeH1(a)).to.be.below(500);
      const s = grpcWebStatus(a);
      expect(s.status, s.message).to.equal(3);
    });
  });

  describe("gRPC (HTTP/2)", () => {
    it("answers a garbage payload with grpc-status 3", async () => {
      const a = await h2(GET_BALANCE, frame(GARBAGE), auth);
      expect(grpcStatus(a), grpcMessage(a)).to.equal(3);
    });

    it("answers grpc-encoding: gzip with a gzip-compressed garbage payload with grpc-status 3", async () => {
      const a = await h2(GET_BALANCE, frame(gzipSync(GARBAGE), 1), { ...auth, "grpc-encoding": "gzip" });
      expect(grpcStatus(a), grpcMessage(a)).to.equal(3);
    });

    it("answers grpc-encoding: gzip with bytes that are not gzip at all with grpc-status 3", async () => {
      const a = await h2(GET_BALANCE, frame(GARBAGE, 1), { ...auth, "grpc-encoding": "gzip" });
      expect(grpcStatus(a), grpcMessage(a)).to.equal(3);
    });

    it("answers grpc-encoding: br with a brotli-compressed garbage payload with grpc-status 3", async () => {
      const a = await h2(GET_BALANCE, frame(brotliCompressSync(GARBAGE), 1), { ...auth, "grpc-encoding": "br" });
      expect(grpcStatus(a), grpcMessage(a)).to.equal(3);
    });

    it("answers a WatchBalance (server streaming) call with a garbage request message with grpc-status 3", async () => {
      const a = await h2(WATCH_BALANCE, frame(GARBAGE), auth, { timeoutMs: 10_000 });
      expect(grpcStatus(a), grpcMessage(a)).to.equal(3);
    });

    it("answers a WatchBalance call with a compressed flag but no grpc-encoding with grpc-status 3", async () => {
      const watch = Buffer.from(toBinary(WatchBalanceRequestSchema, create(WatchBalanceRequestSchema, { accountId: ACCOUNT_A })));
      const a = await h2(WATCH_BALANCE, frame(watch, 1), auth, { timeoutMs: 10_000 });
      expect(grpcStatus(a), grpcMessage(a)).to.equal(3);
    });
  });

  it("keeps a garbage request on one HTTP/2 stream from disturbing a good call on the same connection", async () => {
    const session = http2.connect(harness().baseUrl);
    try {
      const call = (body: Buffer) =>
        new Promise<number>((resolve, reject) => {
          const s = session.request({ ":method": "POST", ":path": GET_BALANCE, "content-type": "application/grpc", te: "trailers", ...auth });
          let status = NaN;
          s.on("response", (h) => h["grpc-status"] !== undefined && (status = Number(h["grpc-status"])));
          s.on("trailers", (t) => (status = Number(t["grpc-status"])));
          s.on("data", () => {});
          s.on("end", () => resolve(status));
          s.on("error", reject);
          s.end(body);
        });
      const [bad, good] = await Promise.all([call(frame(GARBAGE)), call(frame(validGetBalance))]);
      expect(bad).to.equal(3);
      expect(good).to.equal(0);
    } finally {
      session.close();
    }
  });
});
