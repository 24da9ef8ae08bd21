/**
 * A seeded, bounded fuzz of every unary RPC of the billing services.
 *
 * Requests are generated from the service descriptors (random values by field
 * type: odd strings, int64 extremes, negative numbers, unknown enum numbers,
 * random Structs, dates and timestamps, field masks), plus random bytes and
 * bit-flipped valid encodings sent as raw bodies, over the four protocols
 * with the admin token. The PRNG (mulberry32) has a fixed seed, so a failure
 * reproduces.
 *
 * Asserted: no answer is INTERNAL, UNKNOWN or an HTTP 5xx; the server is
 * healthy afterwards; and a refused money-moving request (GrantCredits,
 * DeductCredits, AdjustCredits on a dedicated account) leaves that account's
 * balance and ledger unchanged.
 *
 * Catalogue-wide writes are kept away from what other test files read: new
 * model, package and payment-method names are prefixed "fuzz-"/"ZZ",
 * is_default is never set, cost configs are named by a nonexistent operation
 * type, and every billing-configuration mask holds a path that does not exist.
 */
import { create, fromJson, toBinary, toJsonString, type DescField, type DescMessage, type DescMethod, type DescService, type JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import http from "node:http";
import http2 from "node:http2";
import { AutomationService } from "../../gen/billing/v1/automation_service_pb.js";
import { CreditService, CreditTransactionType, GetBillingConfigurationResponseSchema } from "../../gen/billing/v1/credit_service_pb.js";
import { EventService } from "../../gen/billing/v1/event_service_pb.js";
import { InvoiceService } from "../../gen/billing/v1/invoice_service_pb.js";
import { ModelConfigService } from "../../gen/billing/v1/model_config_service_pb.js";
import { PaymentService } from "../../gen/billing/v1/payment_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { ACCOUNT_A, PROTOCOLS, TOKENS, client, harness, newAccount, type Protocol } from "../harness.js";
import { frame, grpcWebStatus, h1 } from "./raw.js";

const SEED = 0x5eed_b111;
const ROUNDS = 24;
const MONEY_ROUNDS = 40;
const CONCURRENCY = 8;
/** No new request starts after this long (the whole test stays under a minute). */
const BUDGET_MS = 40_000;

const SERVICES: DescService[] = [CreditService, InvoiceService, PaymentService, ModelConfigService, EventService, AutomationService];
const MONEY = new Set(["GrantCredits", "DeductCredits", "AdjustCredits"]);
/** A valid request of each money-moving RPC (account and key are filled in). */
const VALID_MONEY: Record<string, Record<string, JsonValue>> = {
  GrantCredits: { amount: "5", type: "CREDIT_TRANSACTION_TYPE_ADJUSTMENT", description: "fuzz", metadata: { fuzz: true } },
  DeductCredits: { operationType: "clustering", usage: { credits: "2" }, metadata: { fuzz: true } },
  AdjustCredits: { amount: "-1", reason: "fuzz" },
};

// ---------------------------------------------------------------- randomness

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Rng {
  private readonly next: () => number;
  constructor(seed: number) {
    this.next = mulberry32(seed);
  }
  float(): number {
    return this.next();
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(0, 255);
    return b;
  }
  id(): string {
    const hex = () => this.int(0, 0xffff).toString(16).padStart(4, "0");
    return `${hex()}${hex()}-${hex()}-4${hex().slice(1)}-a${hex().slice(1)}-${hex()}${hex()}${hex()}`;
  }
}

const FIXED_STRINGS = [
  "",
  "a",
  "x".repeat(255),
  "x".repeat(256),
  "y".repeat(5000),
  "nul\u0000byte",
  "\u0000",
  "héllo wörld ✓",
  "🚀🚀🚀",
  "\ud800",
  "lone \udfff low",
  " padded ",
  "\t\r\n",
  "' OR '1'='1",
  "'; DROP TABLE billing_accounts; --",
  "%s%s%n",
  "../../etc/passwd",
  "\u202eevil",
  "-1",
  "0",
  "12.50",
  "-0.0001",
  "1e10",
  "99999999999999999999.99",
  "NaN",
  "null",
  "{}",
  "<script>alert(1)</script>",
  "__proto__",
  "constructor",
  "ÿþ",
  "clustering!",
  "2024-13-45",
];

/** A random string; never two or three letters only (those could name a real country or currency). */
function randString(r: Rng): string {
  let s: string;
  if (r.chance(0.6)) s = r.pick(FIXED_STRINGS);
  else if (r.chance(0.3)) s = r.id();
  else {
    const n = r.int(4, 40);
    s = "";
    for (let i = 0; i < n; i++) {
      const k = r.float();
      s += k < 0.7 ? String.fromCharCode(r.int(0x20, 0x7e)) : k < 0.9 ? String.fromCodePoint(r.int(0xa0, 0x2fff)) : String.fromCodePoint(r.int(0x1f300, 0x1f6ff));
    }
  }
  return /^[A-Za-z]{2,3}$/.test(s) ? `z9${s}` : s;
}

/** Sets an own, enumerable property (so "__proto__" is a key, not the prototype). */
function put(o: Record<string, unknown>, k: string, v: unknown) {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

function randJsonValue(r: Rng, depth: number): JsonValue {
  const k = r.int(0, depth > 2 ? 4 : 6);
  switch (k) {
    case 0:
      return null;
    case 1:
      return r.chance(0.5);
    case 2:
      return r.pick([0, -1, 1.5, 1e308, -1e-308, 2 ** 53 + 1, 123456]);
    case 3:
    case 4:
      return randString(r);
    case 5:
      return Array.from({ length: r.int(0, 3) }, () => randJsonValue(r, depth + 1));
    default:
      return randStruct(r, depth + 1);
  }
}

function randStruct(r: Rng, depth = 0): Record<string, JsonValue> {
  const o: Record<string, JsonValue> = {};
  if (depth === 0 && r.chance(0.08)) {
    // Deeper than the 10-level limit.
    let v: Record<string, JsonValue> = { leaf: 1 };
    for (let i = 0; i < r.int(9, 14); i++) v = { a: v };
    return v;
  }
  if (depth === 0 && r.chance(0.05)) return { big: "b".repeat(r.int(16_000, 17_000)) };
  for (let i = r.int(0, 3); i > 0; i--) put(o, randString(r).slice(0, 40), randJsonValue(r, depth));
  return o;
}

// ------------------------------------------------------------- generation

interface Ctx {
  method: DescMethod;
  /** jsonNames of the fields of the request's message fields (for masks). */
  maskPaths: string[];
}

const INT64 = ["0", "1", "-1", "2", "100", "9223372036854775807", "-9223372036854775808", "4611686018427387904", "1000000"];
const INT64_BAD: JsonValue[] = ["9223372036854775808", "-9223372036854775809", "1e3", " 1", "0x10", "+1", "01", "", 1.5, "abc", true];
const UINT64 = ["0", "1", "18446744073709551615"];
const INT32: JsonValue[] = [0, 1, -1, 2, 500, 501, 2147483647, -2147483648];
const INT32_BAD: JsonValue[] = [2147483648, -2147483649, 1.5, "abc", "1e2"];
const DOUBLES: JsonValue[] = [0, 1.5, -1, 1e308, "NaN", "Infinity", "-Infinity", 3.4e38, -0];

function scalarJson(r: Rng, scalar: number): JsonValue {
  // ScalarType numbers: DOUBLE 1, FLOAT 2, INT64 3, UINT64 4, INT32 5, FIXED64 6, FIXED32 7, BOOL 8,
  // STRING 9, BYTES 12, UINT32 13, SFIXED32 15, SFIXED64 16, SINT32 17, SINT64 18.
  switch (scalar) {
    case 1:
    case 2:
      return r.pick(DOUBLES);
    case 3:
    case 16:
    case 18:
      return r.chance(0.12) ? r.pick(INT64_BAD) : r.chance(0.15) ? Number(r.pick(INT64)) : r.pick(INT64);
    case 4:
    case 6:
      return r.chance(0.1) ? r.pick(["-1", "18446744073709551616"]) : r.pick(UINT64);
    case 5:
    case 15:
    case 17:
      return r.chance(0.1) ? r.pick(INT32_BAD) : r.pick(INT32);
    case 7:
    case 13:
      return r.pick([0, 1, 4294967295, -1]);
    case 8:
      return r.chance(0.05) ? "true" : r.chance(0.5);
    case 9:
      return randString(r);
    case 12:
      return r.chance(0.1) ? "!!not base64!!" : r.bytes(r.int(0, 24)).toString("base64");
    default:
      return null;
  }
}

function enumJson(r: Rng, field: { enum: { values: readonly { name: string; number: number }[] } }): JsonValue {
  const k = r.float();
  if (k < 0.55) return r.pick(field.enum.values).name;
  if (k < 0.7) return r.pick(field.enum.values).number;
  if (k < 0.9) return r.pick([99, -1, 2147483647, 7, 12]);
  return "NOT_A_VALUE";
}

function messageJson(r: Rng, desc: DescMessage, ctx: Ctx, depth: number): JsonValue {
  switch (desc.typeName) {
    case "google.protobuf.Struct":
      return randStruct(r);
    case "google.protobuf.Value":
      return randJsonValue(r, 0);
    case "google.protobuf.ListValue":
      return Array.from({ length: r.int(0, 3) }, () => randJsonValue(r, 1));
    case "google.protobuf.Timestamp":
      return r.pick(["2024-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999Z", "2024-02-30T00:00:00Z", "not a time", "2024-01-01T00:00:00+05:00", "2000-01-01T00:00:00.5Z"]);
    case "google.protobuf.Duration":
      return r.pick(["0s", "1s", "-1s", "315576000000s", "3600.5s", "86400s", "1h", "x"]);
    case "google.protobuf.FieldMask": {
      const paths = Array.from({ length: r.int(0, 3) }, () => r.pick([...ctx.maskPaths, "fuzzNotAField", "a.b.c", "updatedBy", ""]));
      if (ctx.method.name === "UpdateBillingConfiguration") paths.push("fuzzNotAField");
      return paths.join(",");
    }
    case "google.protobuf.Empty":
      return {};
    case "google.protobuf.Any":
      return r.chance(0.5) ? {} : { "@type": "type.googleapis.com/google.protobuf.Empty" };
    case "google.type.Date":
      return { year: r.pick([0, 1, 2024, 9999, 10000, -1]), month: r.pick([0, 1, 2, 12, 13]), day: r.pick([0, 1, 29, 31, 32]) };
  }
  if (desc.typeName.startsWith("google.protobuf.") && desc.typeName.endsWith("Value")) {
    const inner = desc.fields[0]!;
    return inner.fieldKind === "scalar" ? scalarJson(r, inner.scalar) : null;
  }
  if (depth > 3) return {};
  return objectJson(r, desc, ctx, depth + 1);
}

function fieldJson(r: Rng, f: DescField, ctx: Ctx, depth: number): JsonValue {
  switch (f.fieldKind) {
    case "scalar":
      return scalarJson(r, f.scalar);
    case "enum":
      return enumJson(r, f);
    case "message":
      return messageJson(r, f.message, ctx, depth);
    case "list":
      return Array.from({ length: r.int(0, 3) }, () =>
        f.listKind === "scalar" ? scalarJson(r, f.scalar) : f.listKind === "enum" ? enumJson(r, f) : messageJson(r, f.message, ctx, depth),
      );
    case "map": {
      const o: Record<string, JsonValue> = {};
      for (let i = r.int(0, 3); i > 0; i--) {
        const k = f.mapKey === 9 ? randString(r).slice(0, 30) : String(scalarJson(r, f.mapKey));
        put(o, k, f.mapKind === "scalar" ? scalarJson(r, f.scalar) : f.mapKind === "enum" ? enumJson(r, f) : messageJson(r, f.message, ctx, depth));
      }
      return o;
    }
  }
}

function objectJson(r: Rng, desc: DescMessage, ctx: Ctx, depth: number): Record<string, JsonValue> {
  const o: Record<string, JsonValue> = {};
  const chosen = new Map<unknown, DescField>();
  for (const oneof of desc.oneofs) if (r.chance(0.7)) chosen.set(oneof, r.pick(oneof.fields));
  for (const f of desc.fields) {
    if (f.oneof ? chosen.get(f.oneof) !== f : !r.chance(0.6)) continue;
    put(o, r.chance(0.1) ? f.name : f.jsonName, fieldJson(r, f, ctx, depth));
  }
  if (depth === 0 && r.chance(0.05)) put(o, "fuzzUnknownField", 1);
  return o;
}

/** Keeps catalogue-wide writes from touching what other tests read (see the file comment). */
function tame(method: DescMethod, o: Record<string, any>, r: Rng) {
  const inner = (k: string) => (o[k] && typeof o[k] === "object" ? (o[k] as Record<string, any>) : undefined);
  const fuzzName = () => `fuzz-${r.id()}`;
  for (const k of ["modelConfig", "model_config"]) {
    const m = inner(k);
    if (!m) continue;
    for (const d of ["isDefault", "is_default"]) if (d in m) m[d] = false;
    if ("modelName" in m || "model_name" in m) m[("modelName" in m ? "modelName" : "model_name")] = fuzzName();
  }
  for (const k of ["creditPackage", "credit_package"]) {
    const p = inner(k);
    if (p) {
      delete p.slug;
      p.slug = fuzzName();
    }
  }
  for (const k of ["costConfig", "cost_config"]) {
    const c = inner(k);
    if (c) {
      delete c.operation_type;
      c.operationType = r.pick(["fuzz_no_such_operation", "", "x".repeat(300)]);
    }
  }
  for (const k of ["paymentMethodConfig", "payment_method_config"]) {
    const c = inner(k);
    if (c) {
      delete c.country_code;
      c.countryCode = r.pick(["ZZ", "zz", "", "ZZZ9"]);
    }
  }
  if (method.name === "DeletePaymentMethodConfig") {
    delete o.country_code;
    o.countryCode = "ZZ";
  }
  if (method.name === "SetDefaultModel") {
    delete o.model_name;
    o.modelName = r.chance(0.5) ? fuzzName() : randString(r);
  }
  if (method.name === "UpdateBillingConfiguration") {
    // The mask always holds a path that does not exist: the update must be refused.
    for (const k of ["updateMask", "update_mask"]) delete o[k];
    o.updateMask = [r.pick(["defaultTokensPerCredit", "creditRoundingMode", ""]), "fuzzNotAField"].join(",");
  }
}

// --------------------------------------------------------------- execution

interface Verdict {
  path: string;
  outcome: string;
  bad: boolean;
}

const h1Agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
let session: http2.ClientHttp2Session | undefined;

function h2Session(): http2.ClientHttp2Session {
  if (!session || session.closed || session.destroyed) {
    session = http2.connect(harness().baseUrl);
    session.on("error", () => {});
  }
  return session;
}

function rawGrpc(path: string, body: Buffer): Promise<{ status: number; grpcStatus: number }> {
  return new Promise((resolve, reject) => {
    const stream = h2Session().request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", authorization: `Bearer ${TOKENS.admin}` });
    const timer = setTimeout(() => {
      stream.close(http2.constants.NGHTTP2_CANCEL);
      reject(new Error("no answer within 10 s"));
    }, 10_000);
    let status = 0;
    let grpcStatus = NaN;
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      if (h["grpc-status"] !== undefined) grpcStatus = Number(h["grpc-status"]);
    });
    stream.on("trailers", (t) => (grpcStatus = Number(t["grpc-status"])));
    stream.on("data", () => {});
    stream.on("end", () => {
      clearTimeout(timer);
      resolve({ status, grpcStatus });
    });
    stream.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    stream.end(body);
  });
}

const BAD_GRPC = new Set([2, 13]); // UNKNOWN, INTERNAL

async function sendRaw(kind: "connect-json" | "connect-proto" | "grpc" | "grpc-web", path: string, body: Buffer): Promise<Verdict> {
  const label = `${kind} raw`;
  try {
    if (kind === "grpc") {
      const a = await rawGrpc(path, frame(body));
      return { path: label, outcome: `HTTP ${a.status} grpc-status ${a.grpcStatus}`, bad: a.status >= 500 || !Number.isFinite(a.grpcStatus) || BAD_GRPC.has(a.grpcStatus) };
    }
    const contentType = { "connect-json": "application/json", "connect-proto": "application/proto", "grpc-web": "application/grpc-web+proto" }[kind];
    const a = await h1(path, kind === "grpc-web" ? frame(body) : body, { "content-type": contentType, authorization: `Bearer ${TOKENS.admin}` }, { agent: h1Agent, timeoutMs: 10_000 });
    if (kind === "grpc-web") {
      const s = grpcWebStatus(a);
      return { path: label, outcome: `HTTP ${a.status} grpc-status ${s.status} ${s.message.slice(0, 120)}`, bad: a.status >= 500 || !Number.isFinite(s.status) || BAD_GRPC.has(s.status) };
    }
    const text = a.body.toString("utf8");
    const code = a.status === 200 ? "ok" : (() => {
      try {
        return String(JSON.parse(text).code);
      } catch {
        return `unparsable ${text.slice(0, 80)}`;
      }
    })();
    return { path: label, outcome: `HTTP ${a.status} ${code} ${text.slice(0, 120)}`, bad: a.status >= 500 || code === "internal" || code === "unknown" };
  } catch (e) {
    return { path: label, outcome: `transport error: ${(e as Error).message}`, bad: true };
  }
}

async function sendClient(service: DescService, method: DescMethod, protocol: Protocol, message: unknown): Promise<Verdict> {
  const c = client(service, TOKENS.admin, protocol) as unknown as Record<string, (req: unknown, o?: unknown) => Promise<unknown>>;
  try {
    await c[method.localName]!(message, { timeoutMs: 10_000 });
    return { path: protocol, outcome: "OK", bad: false };
  } catch (e) {
    if (!(e instanceof ConnectError)) return { path: protocol, outcome: `not a ConnectError: ${String(e)}`, bad: true };
    return { path: protocol, outcome: `${Code[e.code]}: ${e.rawMessage.slice(0, 120)}`, bad: e.code === Code.Internal || e.code === Code.Unknown };
  }
}

/** Bit flips, truncation, random tails and bogus lengths of a valid encoding. */
function mutate(r: Rng, valid: Uint8Array): Buffer {
  const b = Buffer.from(valid);
  switch (r.int(0, 4)) {
    case 0: {
      if (b.length === 0) return r.bytes(r.int(1, 16));
      for (let i = r.int(1, 4); i > 0; i--) {
        const at = r.int(0, b.length - 1);
        b[at] = b[at]! ^ (1 << r.int(0, 7));
      }
      return b;
    }
    case 1:
      return b.subarray(0, r.int(0, Math.max(0, b.length - 1)));
    case 2:
      return Buffer.concat([b, r.bytes(r.int(1, 16))]);
    case 3:
      // A length-delimited field claiming far more bytes than follow.
      return Buffer.concat([b, Buffer.from([(r.int(1, 20) << 3) | 2, 0xff, 0xff, 0xff, 0x7f]), r.bytes(3)]);
    default:
      return r.bytes(r.int(0, 64));
  }
}

function maskPathsOf(desc: DescMessage): string[] {
  return desc.fields.flatMap((f) => (f.fieldKind === "message" && !f.message.typeName.startsWith("google.") ? f.message.fields.map((g) => g.jsonName) : []));
}

/** The message `json` describes, if it is a valid request; undefined otherwise. */
function decode(desc: DescMessage, json: JsonValue): { message: unknown; binaryOk: boolean; jsonOk: boolean } | undefined {
  let message;
  try {
    message = fromJson(desc, json);
  } catch {
    return undefined;
  }
  let binaryOk = true;
  let jsonOk = true;
  try {
    toBinary(desc, message);
  } catch {
    binaryOk = false;
  }
  try {
    toJsonString(desc, message);
  } catch {
    jsonOk = false;
  }
  return { message, binaryOk, jsonOk };
}

async function runPool(tasks: (() => Promise<void>)[], n: number): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < tasks.length) await tasks[next++]!();
    }),
  );
}

// ------------------------------------------------------------------- tests

describe("hostile input: seeded fuzz of every unary RPC", function () {
  this.timeout(90_000);
  const failures: string[] = [];
  let sent = 0;
  let skipped = 0;
  let billingConfigBefore: string | undefined;
  let startedAt = new Date();

  before(async () => {
    startedAt = new Date((await harness().sequelize.query<{ now: Date }>(`SELECT now() AS now`, { type: "SELECT" as never }))[0]!.now);
    billingConfigBefore = toJsonString(GetBillingConfigurationResponseSchema, await client(CreditService, TOKENS.admin).getBillingConfiguration({}));
  });

  after(async () => {
    h1Agent.destroy();
    session?.close();
    // A fuzzed CreateWebhookEndpoint may have registered a random URL: later tests' events must not queue deliveries to it.
    await harness().sequelize.query(`DELETE FROM webhook_endpoints WHERE created_at >= $1`, { bind: [startedAt.toISOString()] });
  });

  it("answers random, mutated and corrupt requests on every protocol without INTERNAL, UNKNOWN or HTTP 5xx", async () => {
    const r = new Rng(SEED);
    const started = performance.now();
    const tasks: (() => Promise<void>)[] = [];
    const counts: Record<string, number> = {};
    const add = (service: DescService, method: DescMethod, what: string, send: () => Promise<Verdict>) =>
      tasks.push(async () => {
        if (performance.now() - started > BUDGET_MS) {
          skipped++;
          return;
        }
        sent++;
        const v = await send();
        counts[v.path] = (counts[v.path] ?? 0) + 1;
        if (v.bad) failures.push(`${service.name}.${method.name} [${v.path}] ${what}: ${v.outcome}`);
      });

    for (let round = 0; round < ROUNDS; round++) {
      for (const service of SERVICES) {
        for (const method of service.methods) {
          if (method.methodKind !== "unary") continue;
          const path = `/${service.typeName}/${method.name}`;
          const ctx: Ctx = { method, maskPaths: maskPathsOf(method.input) };
          const json = objectJson(r, method.input, ctx, 0);
          tame(method, json, r);
          const text = JSON.stringify(json);
          add(service, method, `json ${text.slice(0, 200)}`, () => sendRaw("connect-json", path, Buffer.from(text, "utf8")));
          const decoded = decode(method.input, json);
          if (decoded) {
            for (const protocol of PROTOCOLS) {
              if (protocol === "connect-json-http1" ? decoded.jsonOk : decoded.binaryOk) {
                add(service, method, `message ${text.slice(0, 200)}`, () => sendClient(service, method, protocol, decoded.message));
              }
            }
          }
          const valid = decoded?.binaryOk ? toBinary(method.input, decoded.message as never) : toBinary(method.input, create(method.input));
          for (const kind of ["connect-proto", "grpc", "grpc-web"] as const) {
            const body = mutate(r, valid);
            add(service, method, `bytes ${body.toString("hex").slice(0, 120)}`, () => sendRaw(kind, path, body));
          }
          // Corrupted JSON text: flipped bytes or a cut.
          const jsonBytes = Buffer.from(text, "utf8");
          const corrupt = r.chance(0.5) ? mutate(r, jsonBytes) : jsonBytes.subarray(0, r.int(0, jsonBytes.length));
          add(service, method, `json bytes ${corrupt.toString("latin1").slice(0, 120)}`, () => sendRaw("connect-json", path, corrupt));
        }
      }
    }
    await runPool(tasks, CONCURRENCY);
    const ms = Math.round(performance.now() - started);
    console.log(`      fuzz: ${sent} requests in ${ms} ms (seed ${SEED.toString(16)}, ${skipped} skipped past the budget): ${JSON.stringify(counts)}`);
    expect(sent, "requests sent").to.be.greaterThan(500);
    const byMethod: Record<string, number> = {};
    for (const f of failures) {
      const k = f.slice(0, f.indexOf("]") + 1);
      byMethod[k] = (byMethod[k] ?? 0) + 1;
    }
    expect(failures.length, `${failures.length} bad answers ${JSON.stringify(byMethod)}, e.g.\n${failures.slice(0, 12).join("\n")}`).to.equal(0);
  });

  it("leaves the account's balance and ledger unchanged for every refused money-moving request", async () => {
    const r = new Rng(SEED ^ 0x0d0c);
    const account = newAccount("fuzzmoney");
    const admin = client(CreditService, TOKENS.admin);
    await admin.grantCredits({ accountId: account, amount: 1_000n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: `fuzz-seed-${r.id()}` });
    const state = async () => {
      const balance = (await admin.getBalance({ accountId: account })).balance!.balance;
      const rows = (await admin.listTransactions({ accountId: account, pageSize: 500 })).transactions.length;
      return `${balance}/${rows}`;
    };
    const methods = CreditService.methods.filter((m) => MONEY.has(m.name));
    const changed: string[] = [];
    const moneyFailures: string[] = [];
    let refused = 0;
    let accepted = 0;
    for (let round = 0; round < MONEY_ROUNDS; round++) {
      for (const method of methods) {
        const path = `/${CreditService.typeName}/${method.name}`;
        let json: Record<string, JsonValue>;
        if (r.chance(0.6)) {
          // A valid request with one field replaced by a random value.
          json = { ...VALID_MONEY[method.name]!, idempotencyKey: `fuzz-${r.id()}` };
          const f = r.pick(method.input.fields.filter((g) => g.name !== "account_id"));
          put(json, f.jsonName, fieldJson(r, f, { method, maskPaths: [] }, 0));
        } else {
          json = objectJson(r, method.input, { method, maskPaths: [] }, 0);
          delete json.account_id;
        }
        json.accountId = account;
        const text = JSON.stringify(json);
        const decoded = decode(method.input, json);
        const valid = decoded?.binaryOk ? toBinary(method.input, decoded.message as never) : undefined;
        const attempts: [string, () => Promise<Verdict>][] = [[`json ${text.slice(0, 500)}`, () => sendRaw("connect-json", path, Buffer.from(text, "utf8"))]];
        if (decoded?.binaryOk) {
          const protocol = r.pick(PROTOCOLS.filter((p) => p !== "connect-json-http1"));
          attempts.push([`${protocol} message ${text.slice(0, 500)}`, () => sendClient(CreditService, method, protocol, decoded.message)]);
        }
        if (valid) {
          const body = mutate(r, valid);
          attempts.push([`grpc bytes ${body.toString("hex").slice(0, 120)}`, () => sendRaw("grpc", path, body)]);
        }
        for (const [what, send] of attempts) {
          const before = await state();
          const v = await send();
          sent++;
          if (v.bad) moneyFailures.push(`CreditService.${method.name} [${v.path}] ${what}: ${v.outcome}`);
          const ok = v.outcome === "OK" || v.outcome.startsWith("HTTP 200 ok") || / grpc-status 0\b/.test(v.outcome);
          if (ok) {
            accepted++;
            continue;
          }
          refused++;
          const after = await state();
          if (after !== before) changed.push(`${method.name} ${what} -> ${v.outcome}: balance/rows ${before} became ${after}`);
        }
      }
    }
    console.log(`      fuzz (money): ${refused} refused and ${accepted} accepted requests on ${account}`);
    expect(refused, "some money-moving requests were refused").to.be.greaterThan(10);
    expect(changed, changed.slice(0, 10).join("\n")).to.deep.equal([]);
    expect(moneyFailures, `${moneyFailures.length} bad answers, e.g.\n${moneyFailures.slice(0, 15).join("\n")}`).to.deep.equal([]);
  });

  it("answers ListUsageLogs with the largest Timestamp there is (9999-12-31T23:59:59.999999999Z) without INTERNAL on every protocol (found by this fuzz)", async () => {
    for (const protocol of PROTOCOLS) {
      for (const window of [{ endTime: { seconds: 253402300799n, nanos: 999_999_999 } }, { startTime: { seconds: 253402300799n, nanos: 999_999_999 } }]) {
        const v = await sendClient(CreditService, CreditService.method.listUsageLogs, protocol, { accountId: ACCOUNT_A, ...window });
        expect(v.bad, `${protocol} ${Object.keys(window)[0]}: ${v.outcome}`).to.equal(false);
      }
    }
  });

  it("is healthy afterwards: GetBalance answers on every protocol, grpc.health.v1 says SERVING, and the billing configuration is unchanged", async () => {
    for (const protocol of PROTOCOLS) {
      const res = await client(CreditService, TOKENS.service, protocol).getBalance({ accountId: ACCOUNT_A });
      expect(res.balance?.accountId).to.equal(ACCOUNT_A);
    }
    const health = createClient(Health, createGrpcTransport({ baseUrl: harness().baseUrl }));
    expect((await health.check({ service: "" })).status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
    const after = toJsonString(GetBillingConfigurationResponseSchema, await client(CreditService, TOKENS.admin).getBillingConfiguration({}));
    expect(after, "a fuzzed UpdateBillingConfiguration with an unknown mask path must be refused").to.equal(billingConfigBefore);
  });
});
