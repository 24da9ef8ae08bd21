/**
 * The unary path (src/unary.ts) over gRPC: it must answer exactly as
 * connect-node's own gRPC handler does, and leave every request it does not
 * take (JSON codec, streaming) to connect-node.
 *
 * Requests are written by hand on a raw HTTP/2 stream so that the wire is what
 * the test says it is. A second server with the fast path off
 * (UNARY_FAST_PATH=off) serves every call through connect-node, so sending
 * the same message to both compares the two paths.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { expect } from "chai";
import http2 from "node:http2";
import { gunzipSync, gzipSync } from "node:zlib";
import {
  CreditService,
  CreditTransactionType,
  DeductCreditsRequestSchema,
  GetBalanceRequestSchema,
  GetBalanceResponseSchema,
  GrantCreditsRequestSchema,
} from "../gen/billing/v1/credit_service_pb.js";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import { createApp } from "../src/app.js";
import { createLogger } from "../src/logger.js";
import type { BillingServer } from "../src/server.js";
import { ACCOUNT_A, TOKENS, client, grpcJsCall, grpcJsClient, harness, key, newAccount } from "./harness.js";

interface RawAnswer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  data: Buffer;
}

const GET_BALANCE = "/billing.v1.CreditService/GetBalance";
const DEDUCT = "/billing.v1.CreditService/DeductCredits";

function frame(message: Uint8Array, flags = 0): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out[0] = flags;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** One call on a fresh HTTP/2 connection; `gzip` compresses the message and says so. */
async function rawGrpc(path: string, body: Buffer, headers: http2.OutgoingHttpHeaders = {}, baseUrl = harness().baseUrl): Promise<RawAnswer> {
  const session = http2.connect(baseUrl);
  try {
    return await new Promise<RawAnswer>((resolve, reject) => {
      const stream = session.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
        authorization: `Bearer ${TOKENS.service}`,
        ...headers,
      });
      const chunks: Buffer[] = [];
      let status = 0;
      let responseHeaders: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      stream.on("response", (h) => {
        status = Number(h[":status"]);
        responseHeaders = h;
      });
      stream.on("trailers", (t) => (trailers = t));
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => resolve({ status, headers: responseHeaders, trailers, data: Buffer.concat(chunks) }));
      stream.on("error", reject);
      stream.end(body);
    });
  } finally {
    session.close();
  }
}

/** The grpc-status of an answer: in the trailers, or in the headers of a trailers-only answer. */
function grpcStatus(a: RawAnswer): number {
  return Number(a.trailers["grpc-status"] ?? a.headers["grpc-status"]);
}

function details(a: RawAnswer) {
  const bin = a.trailers["grpc-status-details-bin"] ?? a.headers["grpc-status-details-bin"];
  return bin === undefined ? undefined : fromBinary(StatusSchema, Buffer.from(String(bin), "base64"));
}

/** The message of a successful answer (one envelope, gunzipped if flagged). */
function message(a: RawAnswer): Buffer {
  const bytes = a.data.subarray(5, 5 + a.data.readUInt32BE(1));
  return a.data[0] === 1 ? gunzipSync(bytes) : bytes;
}

/** The same message, gzip-compressed. */
function gzipped(message: Uint8Array): [Buffer, http2.OutgoingHttpHeaders] {
  return [frame(gzipSync(message), 1), { "grpc-encoding": "gzip" }];
}

describe("unary gRPC path", () => {
  const getBalance = toBinary(GetBalanceRequestSchema, create(GetBalanceRequestSchema, { accountId: ACCOUNT_A }));
  // The same service with every call through connect-node.
  let connectNode: BillingServer;
  let connectNodeUrl = "";
  const viaConnectNode = (path: string, body: Buffer, headers: http2.OutgoingHttpHeaders = {}) => rawGrpc(path, body, headers, connectNodeUrl);
  before(async () => {
    connectNode = createApp({ ...harness().config, unaryFastPath: false }, harness().sequelize, createLogger("silent"));
    connectNodeUrl = `http://127.0.0.1:${await connectNode.listen(0, "127.0.0.1")}`;
  });
  after(async () => {
    await connectNode?.close(1_000);
  });

  it("answers a call as connect-node does: same message, content type and status", async () => {
    const lean = await rawGrpc(GET_BALANCE, frame(getBalance));
    const viaConnect = await viaConnectNode(GET_BALANCE, frame(getBalance));
    expect(lean.status).to.equal(200);
    expect(lean.headers["content-type"]).to.equal("application/grpc+proto");
    expect(grpcStatus(lean)).to.equal(0);
    expect(grpcStatus(viaConnect)).to.equal(0);
    expect(lean.data[0], "the lean path answers uncompressed").to.equal(0);
    const a = fromBinary(GetBalanceResponseSchema, message(lean));
    expect(a.balance?.accountId).to.equal(ACCOUNT_A);
    expect(a).to.deep.equal(fromBinary(GetBalanceResponseSchema, message(viaConnect)));
  });

  it("answers an invalid request with connect-node's status, message and details, and writes nothing", async () => {
    const account = newAccount("lean");
    const bad = toBinary(DeductCreditsRequestSchema, create(DeductCreditsRequestSchema, { accountId: account, operationType: "clustering", usage: { credits: -5n }, idempotencyKey: key() }));
    const lean = await rawGrpc(DEDUCT, frame(bad));
    const viaConnect = await viaConnectNode(DEDUCT, frame(bad));
    expect(grpcStatus(lean)).to.equal(3); // INVALID_ARGUMENT
    expect(grpcStatus(viaConnect)).to.equal(3);
    expect(lean.trailers["grpc-message"]).to.equal(viaConnect.trailers["grpc-message"]);
    const leanDetails = details(lean);
    expect(leanDetails?.details.map((d) => d.typeUrl)).to.include("type.googleapis.com/google.rpc.BadRequest");
    expect(leanDetails).to.deep.equal(details(viaConnect));
    const history = await client(CreditService, TOKENS.admin).listTransactions({ accountId: account });
    expect(history.transactions).to.have.length(0);
  });

  it("runs the auth interceptor: no token is UNAUTHENTICATED, another account is PERMISSION_DENIED", async () => {
    const anonymous = await rawGrpc(GET_BALANCE, frame(getBalance), { authorization: "" });
    expect(grpcStatus(anonymous)).to.equal(16);
    const other = toBinary(GetBalanceRequestSchema, create(GetBalanceRequestSchema, { accountId: "acct_b" }));
    const denied = await rawGrpc(GET_BALANCE, frame(other), { authorization: `Bearer ${TOKENS.accountA}` });
    expect(grpcStatus(denied)).to.equal(7);
  });

  describe("refuses a malformed call as connect-node would, before any handler runs", () => {
    const cases: [string, () => [Buffer, http2.OutgoingHttpHeaders?], number][] = [
      ["an empty body: UNIMPLEMENTED (missing input message)", () => [Buffer.alloc(0)], 12],
      ["two messages: UNIMPLEMENTED (extra input message)", () => [Buffer.concat([frame(getBalance), frame(getBalance)])], 12],
      ["a cut envelope: INVALID_ARGUMENT", () => [frame(getBalance).subarray(0, 7)], 3],
      ["a compressed flag without grpc-encoding: INVALID_ARGUMENT (connect-node says INTERNAL)", () => [frame(getBalance, 1)], 3],
      ["bytes that are not the request message: INVALID_ARGUMENT (connect-node says INTERNAL)", () => [frame(Buffer.from([0xff, 0xff, 0xff]))], 3],
      ["a declared length over 4 MiB: RESOURCE_EXHAUSTED", () => [Buffer.from([0, 0x01, 0, 0, 0])], 8],
      ["a malformed grpc-timeout: INVALID_ARGUMENT", () => [frame(getBalance), { "grpc-timeout": "soon" }], 3],
    ];
    for (const [name, build, code] of cases) {
      it(name, async () => {
        const [body, headers] = build();
        const answer = await rawGrpc(GET_BALANCE, body, headers);
        expect(answer.status).to.equal(200);
        expect(grpcStatus(answer), String(answer.trailers["grpc-message"])).to.equal(code);
      });
    }
  });

  it("carries grpc-timeout into the SQL: a grant stuck on a locked account is DEADLINE_EXCEEDED and writes nothing, on both paths", async () => {
    const account = newAccount("deadline");
    await client(CreditService, TOKENS.admin).grantCredits({ accountId: account, amount: 5n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() });
    const grant = toBinary(GrantCreditsRequestSchema, create(GrantCreditsRequestSchema, { accountId: account, amount: 7n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() }));
    const { sequelize } = harness();
    const lock = await sequelize.transaction();
    try {
      await sequelize.query("SELECT 1 FROM billing_accounts WHERE account_id = $1 FOR UPDATE", { bind: [account], transaction: lock });
      for (const [body, headers, url] of [[frame(grant), {}, harness().baseUrl], [...gzipped(grant), harness().baseUrl], [frame(grant), {}, connectNodeUrl]] as const) {
        const started = performance.now();
        const answer = await rawGrpc("/billing.v1.CreditService/GrantCredits", body, { authorization: `Bearer ${TOKENS.admin}`, "grpc-timeout": "300m", ...headers }, url);
        expect(grpcStatus(answer), String(answer.trailers["grpc-message"])).to.equal(4); // DEADLINE_EXCEEDED
        expect(performance.now() - started).to.be.below(5_000);
      }
    } finally {
      await lock.rollback();
    }
    const balance = await client(CreditService, TOKENS.admin).getBalance({ accountId: account });
    expect(balance.balance?.balance).to.equal(5n);
  });

  it("serves a write with the longest grpc-timeout there is (99999999H), compressed or not", async () => {
    const account = newAccount("longdeadline");
    // (connect-node's own deadline timer overflows on this value; the fast path is what serves it.)
    for (const path of ["fast", "gzip"]) {
      const grant = toBinary(GrantCreditsRequestSchema, create(GrantCreditsRequestSchema, { accountId: account, amount: 3n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() }));
      const [body, headers] = path === "gzip" ? gzipped(grant) : [frame(grant), {}];
      const url = path === "connect-node" ? connectNodeUrl : harness().baseUrl;
      const answer = await rawGrpc("/billing.v1.CreditService/GrantCredits", body, { authorization: `Bearer ${TOKENS.admin}`, "grpc-timeout": "99999999H", ...headers }, url);
      expect(grpcStatus(answer), String(answer.trailers["grpc-message"])).to.equal(0);
    }
    const balance = await client(CreditService, TOKENS.admin).getBalance({ accountId: account });
    expect(balance.balance?.balance).to.equal(6n);
  });

  it("leaves application/grpc+json to connect-node", async () => {
    const answer = await rawGrpc(GET_BALANCE, frame(Buffer.from(JSON.stringify({ accountId: ACCOUNT_A }))), { "content-type": "application/grpc+json" });
    expect(grpcStatus(answer)).to.equal(0);
    expect(JSON.parse(message(answer).toString()).balance.accountId).to.equal(ACCOUNT_A);
  });

  it("serves a grpc-js client that compresses its requests", async () => {
    const account = newAccount("gzip");
    const c = grpcJsClient("CreditService");
    const gz = new (c.constructor as new (address: string, creds: grpc.ChannelCredentials, options: object) => typeof c)(
      `127.0.0.1:${harness().port}`,
      grpc.credentials.createInsecure(),
      { "grpc.default_compression_algorithm": grpc.compressionAlgorithms.gzip },
    );
    try {
      await grpcJsCall(gz, "grantCredits", { accountId: account, amount: "40", type: "CREDIT_TRANSACTION_TYPE_ADJUSTMENT", description: "gzip test", idempotencyKey: key() }, TOKENS.admin);
      const res = await grpcJsCall<{ transaction: { balanceAfter: string } }>(
        gz,
        "deductCredits",
        { accountId: account, operationType: "clustering", usage: { credits: "15" }, idempotencyKey: key() },
        TOKENS.service,
      );
      expect(res.transaction.balanceAfter).to.equal("25");
    } finally {
      gz.close();
      c.close();
    }
  });

  it("keeps serving after a client resets a call mid-request", async () => {
    const session = http2.connect(harness().baseUrl);
    try {
      const stream = session.request({ ":method": "POST", ":path": GET_BALANCE, "content-type": "application/grpc", authorization: `Bearer ${TOKENS.service}` });
      stream.write(frame(getBalance).subarray(0, 3));
      await new Promise((r) => setTimeout(r, 20));
      stream.close(http2.constants.NGHTTP2_CANCEL);
      await new Promise((r) => stream.on("close", r));
    } finally {
      session.close();
    }
    const after = await rawGrpc(GET_BALANCE, frame(getBalance));
    expect(grpcStatus(after)).to.equal(0);
  });

  it("grants through the lean path land once per idempotency key", async () => {
    const account = newAccount("leanidem");
    const grant = toBinary(GrantCreditsRequestSchema, create(GrantCreditsRequestSchema, { accountId: account, amount: 7n, type: CreditTransactionType.ADJUSTMENT, description: "lean", idempotencyKey: key() }));
    const answers = await Promise.all([1, 2, 3].map(() => rawGrpc("/billing.v1.CreditService/GrantCredits", frame(grant), { authorization: `Bearer ${TOKENS.admin}` })));
    for (const a of answers) expect(grpcStatus(a), String(a.trailers["grpc-message"])).to.equal(0);
    const balance = await client(CreditService, TOKENS.admin).getBalance({ accountId: account });
    expect(balance.balance?.balance).to.equal(7n);
  });
});
