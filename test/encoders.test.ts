/**
 * The compiled response encoders against protobuf-es: src/binary-encoder.ts
 * must write toBinary's bytes and src/json-encoder.ts toJsonString's text
 * (alwaysEmitImplicit), for every message type of every service, on
 * generated messages that reach each field kind, zero values, extremes of
 * each integer type, -0 and NaN, multi-byte and broken UTF-16 strings,
 * nested JSON metadata, timestamps, unknown enum numbers, oneofs, optional
 * fields and unknown fields; and where protobuf-es refuses a message, so must they.
 */
import { create, fromBinary, toBinary, toJsonString, ScalarType, type DescField, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { expect } from "chai";
import * as automation from "../gen/billing/v1/automation_service_pb.js";
import * as credits from "../gen/billing/v1/credit_service_pb.js";
import * as diagnostics from "../gen/billing/v1/diagnostics_service_pb.js";
import * as events from "../gen/billing/v1/event_service_pb.js";
import * as invoices from "../gen/billing/v1/invoice_service_pb.js";
import * as models from "../gen/billing/v1/model_config_service_pb.js";
import * as payments from "../gen/billing/v1/payment_service_pb.js";
import { binaryEncoder, encodesItself } from "../src/binary-encoder.js";
import { encodesItselfAsJson, jsonEncoder } from "../src/json-encoder.js";

const services: DescService[] = [automation, credits, diagnostics, events, invoices, models, payments].flatMap((file) =>
  Object.values(file).filter((v): v is DescService => typeof v === "object" && v !== null && (v as { kind?: string }).kind === "service"),
);

/** Every message type reachable from the services' requests and responses. */
function allMessages(): DescMessage[] {
  const seen = new Map<string, DescMessage>();
  const visit = (m: DescMessage) => {
    if (seen.has(m.typeName)) return;
    seen.set(m.typeName, m);
    for (const f of m.fields) if (f.message) visit(f.message);
  };
  for (const s of services) for (const method of s.methods) (visit(method.input), visit(method.output));
  return [...seen.values()];
}

// A small deterministic generator, so that a failure reproduces.
let seed = 42;
function rand(): number {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed / 0x7fffffff;
}
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;

const STRINGS = ["", "a", "acct_42", "ünïcödé", "日本語のテキスト", "emoji 😀 pair", "lone \ud800 high", "lone \udc00 low", "end high \ud83d", "x".repeat(65), "ü".repeat(70) + "😀", "\ud800".repeat(80)];
const VALUES: Record<number, readonly unknown[]> = {
  [ScalarType.INT32]: [0, 1, -1, 127, 128, 300, 2147483647, -2147483648],
  [ScalarType.SINT32]: [0, 1, -1, 2147483647, -2147483648],
  [ScalarType.SFIXED32]: [0, 1, -1, 2147483647, -2147483648],
  [ScalarType.UINT32]: [0, 1, 127, 128, 16384, 4294967295],
  [ScalarType.FIXED32]: [0, 1, 4294967295],
  [ScalarType.INT64]: [0n, 1n, -1n, 127n, 128n, 268435456n, 12345678901234n, 2n ** 63n - 1n, -(2n ** 63n)],
  [ScalarType.SINT64]: [0n, 1n, -1n, 2n ** 63n - 1n, -(2n ** 63n)],
  [ScalarType.SFIXED64]: [0n, -1n, 2n ** 63n - 1n, -(2n ** 63n)],
  [ScalarType.UINT64]: [0n, 1n, 2n ** 53n + 1n, 2n ** 64n - 1n],
  [ScalarType.FIXED64]: [0n, 1n, 2n ** 64n - 1n],
  [ScalarType.DOUBLE]: [0, -0, 1.5, -1e300, NaN, Infinity],
  [ScalarType.FLOAT]: [0, -0, 1.5, -2.25],
  [ScalarType.BOOL]: [true, false],
  [ScalarType.STRING]: STRINGS,
};

function scalar(type: ScalarType): unknown {
  if (type === ScalarType.BYTES) return pick([new Uint8Array(0), new Uint8Array([1, 2, 3]), new Uint8Array(200).fill(7)]);
  return pick(VALUES[type]!);
}

/** Mostly plain JSON; now and then what a Struct cannot hold (protobuf-es refuses it, in JSON at least). */
function json(depth: number): unknown {
  const r = rand();
  if (depth > 2 || r < 0.5) return rand() < 0.03 ? pick([undefined, NaN, Infinity, new Date(0)]) : pick([null, 0, -0, 1.25, -7, "", "text", "ü😀", "\ud800", true, false]);
  if (r < 0.75) return Array.from({ length: Math.floor(rand() * 4) }, () => json(depth + 1));
  return jsonObject(depth + 1);
}

function jsonObject(depth: number): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  const n = Math.floor(rand() * 4);
  for (let i = 0; i < n; i++) o[pick(["", "k", "key_" + i, "ü", "10", "2", "__proto__x"])] = json(depth);
  // An own "__proto__" key, as JSON.parse makes one.
  if (rand() < 0.05) Object.defineProperty(o, "__proto__", { value: "own", enumerable: true, writable: true, configurable: true });
  return o;
}

function fieldValue(f: DescField, depth: number): unknown {
  const one = (): unknown => {
    if (f.fieldKind === "enum" || (f.fieldKind === "list" && f.listKind === "enum")) return rand() < 0.05 ? 99 : pick(f.enum!.values).number;
    if (f.message) {
      if (f.message.typeName === "google.protobuf.Struct") return jsonObject(depth);
      if (f.message.typeName === "google.protobuf.Timestamp")
        return create(f.message, { seconds: pick([0n, 1_764_620_062n, -62_135_596_800n, 253_402_300_799n, 2n ** 40n]), nanos: pick([0, 1_000_000, 123_456_000, 123_456_789, 5]) } as never);
      return message(f.message, depth + 1);
    }
    return scalar(f.scalar!);
  };
  if (f.fieldKind === "list") return Array.from({ length: Math.floor(rand() * 4) }, one);
  if (f.fieldKind === "map") {
    const entries: Record<string, unknown> = {};
    for (let i = Math.floor(rand() * 3); i > 0; i--) entries[pick(["", "k", "ü" + i])] = f.mapKind === "message" ? message(f.message!, depth + 1) : f.mapKind === "enum" ? pick(f.enum!.values).number : scalar(f.scalar!);
    return entries;
  }
  return one();
}

function message(schema: DescMessage, depth = 0): Record<string, unknown> {
  const init: Record<string, unknown> = {};
  if (depth > 3) return create(schema) as never;
  for (const f of schema.fields) {
    if (f.oneof) continue;
    if (f.message && f.fieldKind === "message" && rand() < 0.3) continue; // unset
    if (rand() < 0.2) continue; // left at its default
    init[f.localName] = fieldValue(f, depth);
  }
  for (const o of schema.oneofs) {
    if (rand() < 0.3) continue;
    const f = pick(o.fields);
    init[o.localName] = { case: f.localName, value: fieldValue(f, depth) };
  }
  return create(schema, init as never) as never;
}

/** Both encoders answer as protobuf-es does: the same bytes and text, or an error where it has one. */
function same(schema: DescMessage, m: object): void {
  const outcome = (f: () => Uint8Array | string) => {
    try {
      const out = f();
      return typeof out === "string" ? out : Buffer.from(out).toString("hex");
    } catch {
      return "(refused)";
    }
  };
  expect(outcome(() => binaryEncoder(schema)(m)), `${schema.typeName} binary`).to.equal(outcome(() => toBinary(schema, m as never)));
  expect(outcome(() => jsonEncoder(schema)(m).toString("utf8")), `${schema.typeName} JSON`).to.equal(outcome(() => toJsonString(schema, m as never, { alwaysEmitImplicit: true })));
}

describe("response encoders", () => {
  const messages = allMessages();

  it("encode every response type themselves (none falls back to protobuf-es)", () => {
    for (const s of services)
      for (const method of s.methods) {
        expect(encodesItself(method.output), method.output.typeName).to.equal(true);
        expect(encodesItselfAsJson(method.output), method.output.typeName).to.equal(true);
      }
  });

  it("write what protobuf-es writes, for every message type, on generated messages", () => {
    expect(messages.length).to.be.greaterThan(50);
    let refused = 0;
    for (const schema of messages) {
      same(schema, create(schema));
      for (let i = 0; i < 40; i++) {
        const m = message(schema);
        same(schema, m);
        try {
          toJsonString(schema, m as never);
        } catch {
          refused++;
        }
      }
    }
    // The generator reaches both sides: mostly messages protobuf-es encodes, some it refuses.
    expect(refused).to.be.greaterThan(0);
    expect(refused).to.be.lessThan(messages.length * 40 * 0.5);
  });

  it("answer as protobuf-es for shapes create() would not give: undefined values, holes, objects of another type", () => {
    const tx = message(credits.CreditTransactionSchema);
    const withHole: unknown[] = [];
    withHole[1] = create(credits.CreditTransactionSchema);
    const cases: [DescMessage, object][] = [
      // A oneof case without its value: protobuf-es writes the case with a zero value.
      [events.EventSchema, create(events.EventSchema, { id: "e", data: { case: "balanceLow", value: undefined } } as never)],
      // Implicit fields left undefined or missing.
      [credits.CreditTransactionSchema, { ...create(credits.CreditTransactionSchema), type: undefined }],
      [credits.CreditTransactionSchema, { $typeName: "billing.v1.CreditTransaction", allocations: [] }],
      [credits.CreditTransactionSchema, { ...tx, createdAt: { $typeName: "google.protobuf.Timestamp", seconds: 1n } }],
      // Lists with holes.
      [credits.ListTransactionsResponseSchema, create(credits.ListTransactionsResponseSchema, { transactions: withHole } as never)],
      // Nested objects without their $typeName, or of another type; a missing oneof property.
      [credits.CreditTransactionSchema, { ...tx, createdAt: { seconds: 1n, nanos: 0 } }],
      [credits.CreditTransactionSchema, { ...tx, createdAt: create(credits.CreditTransactionSchema) }],
      [credits.DeductCreditsResponseSchema, { ...create(credits.DeductCreditsResponseSchema), transaction: {} }],
      [events.EventSchema, { ...create(events.EventSchema), data: undefined }],
      // $unknown null is no unknown fields.
      [credits.CreditTransactionSchema, { ...tx, $unknown: null }],
    ];
    for (const [schema, m] of cases) same(schema, m);
  });

  it("writes unknown fields after the known ones, as toBinary", () => {
    const schema = credits.DeductCreditsResponseSchema;
    const known = toBinary(schema, message(schema) as never);
    const extra = Buffer.from([0xf8, 0x3e, 0x05, 0x82, 0x3f, 0x02, 0x68, 0x69]); // fields 999 (varint) and 1008 (bytes "hi")
    const parsed = fromBinary(schema, Buffer.concat([known, extra]));
    expect(parsed.$unknown?.length).to.equal(2);
    same(schema, parsed);
  });

  it("leaves values outside their type to toBinary, which refuses them as before", () => {
    const schema = credits.CreditTransactionSchema;
    const bad = create(schema, { amount: 2n ** 64n } as never);
    expect(() => toBinary(schema, bad)).to.throw();
    expect(() => binaryEncoder(schema)(bad)).to.throw();
  });

  it("leaves room before the message for an envelope header", () => {
    const schema = credits.DeductCreditsResponseSchema;
    const m = message(schema);
    const out = binaryEncoder(schema)(m, 5);
    expect(out.subarray(5).equals(Buffer.from(toBinary(schema, m as never)))).to.equal(true);
  });
});
