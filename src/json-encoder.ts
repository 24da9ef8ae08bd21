/**
 * Proto3 JSON of response messages (Connect's JSON codec), compiled once per
 * message type from its descriptor: the same text as protobuf-es's
 * `toJsonString` with `alwaysEmitImplicit`, at a fraction of its cost.
 *
 * `toJson` walks every message through reflection and converts each
 * google.protobuf.Struct field (held as a JSON object) to a Struct message
 * and back; for a DeductCredits answer that was ~7% of the service's CPU per
 * Connect JSON call. Here each type's fields are known in advance (JSON name,
 * kind, presence) and a Struct field's JSON object is checked and used as it
 * is.
 *
 * The same text, by construction and by test (test/encoders.test.ts
 * compares every message type of every service with `toJsonString`): fields
 * in number order under their JSON names, implicit-presence fields always
 * (zero values and empty lists included), explicit-presence and message
 * fields only when set, 64-bit integers as decimal strings, NaN and
 * infinities as strings, bytes as standard base64, enums by name (a number
 * without a name as the number), Timestamps in RFC 3339 with 0, 3, 6 or 9
 * fractional digits.
 * What it does not take, it leaves to `toJsonString`, which then says what
 * is wrong as it always has: a type with a map field, a well-known type
 * other than Timestamp and Struct, a Struct holding anything but plain JSON
 * (undefined, a non-finite number, a class instance), a value of the wrong
 * type or out of range, or a shape `create()` would not give (a nested
 * object without its `$typeName`, an implicit field left undefined, a oneof
 * case without its value, a list with holes).
 */
import { ScalarType, toJsonString, type DescEnum, type DescField, type DescMessage } from "@bufbuild/protobuf";
import { planMessage, type MessagePlan, type Plans } from "./message-plan.js";
import { base64Encode } from "@bufbuild/protobuf/wire";

/** Encodes a message of one type as UTF-8 JSON. */
export type JsonEncoder = (message: object) => Buffer;

const enum Kind {
  Scalar,
  Enum,
  Message,
  Timestamp,
  /** google.protobuf.Struct held as a JSON object. */
  Json,
  ScalarList,
  EnumList,
  MessageList,
  TimestampList,
  JsonList,
}

interface FieldPlan {
  name: string;
  json: string;
  kind: Kind;
  oneof: string | undefined;
  /** Written only when set (explicit presence, messages, oneof members); otherwise always. */
  explicit: boolean;
  scalar: ScalarType;
  enumNames: Map<number, string> | undefined;
  message: Plan | undefined;
}

type Plan = MessagePlan<FieldPlan>;

const UNSUPPORTED = Symbol("leave it to toJsonString");
const IMPLICIT = 2; // google.protobuf.FeatureSet.FieldPresence.IMPLICIT
const OPTIONS = { alwaysEmitImplicit: true };
const MIN_TIMESTAMP_MS = Date.parse("0001-01-01T00:00:00Z");
const MAX_TIMESTAMP_MS = Date.parse("9999-12-31T23:59:59Z");

/** The encoder of `schema`'s messages (`toJsonString` itself when the type holds a field this encoder does not take). */
export function jsonEncoder(schema: DescMessage): JsonEncoder {
  const plan = planOf(schema, new Map());
  const slow = (message: object) => Buffer.from(toJsonString(schema, message as never, OPTIONS), "utf8");
  if (!plan) return slow;
  return (message) => {
    let json: unknown;
    try {
      json = messageJson(plan, message);
    } catch (err) {
      if (err === UNSUPPORTED) return slow(message);
      throw err;
    }
    return Buffer.from(JSON.stringify(json), "utf8");
  };
}

/** Whether `jsonEncoder` encodes `schema`'s messages itself (rather than through toJsonString). */
export function encodesItselfAsJson(schema: DescMessage): boolean {
  return planOf(schema, new Map()) !== undefined;
}

function planOf(desc: DescMessage, plans: Plans<FieldPlan>): Plan | undefined {
  // Well-known types have JSON of their own; the ones this encoder writes are planned as field kinds.
  if (desc.typeName.startsWith("google.protobuf.")) return undefined;
  return planMessage(desc, plans, fieldPlan);
}

function fieldPlan(f: DescField, plans: Plans<FieldPlan>): FieldPlan | undefined {
  const base = {
    name: f.localName,
    json: f.jsonName,
    oneof: f.oneof?.localName,
    explicit: f.oneof !== undefined || f.presence !== IMPLICIT,
    scalar: ScalarType.INT32,
    enumNames: undefined as Map<number, string> | undefined,
    message: undefined as Plan | undefined,
  };
  switch (f.fieldKind) {
    case "scalar":
      return { ...base, kind: Kind.Scalar, scalar: f.scalar };
    case "enum":
      return f.enum.typeName === "google.protobuf.NullValue" ? undefined : { ...base, kind: Kind.Enum, enumNames: namesOf(f.enum) };
    case "message": {
      const k = f.delimitedEncoding ? undefined : messageKind(f.message, plans);
      return k && { ...base, kind: k.kind, message: k.plan };
    }
    case "list":
      if (f.listKind === "scalar") return { ...base, kind: Kind.ScalarList, scalar: f.scalar };
      if (f.listKind === "enum") return f.enum.typeName === "google.protobuf.NullValue" ? undefined : { ...base, kind: Kind.EnumList, enumNames: namesOf(f.enum) };
      {
        const k = f.delimitedEncoding ? undefined : messageKind(f.message, plans);
        if (!k) return undefined;
        const kind = k.kind === Kind.Timestamp ? Kind.TimestampList : k.kind === Kind.Json ? Kind.JsonList : Kind.MessageList;
        return { ...base, kind, message: k.plan };
      }
    case "map":
      return undefined;
  }
}

function messageKind(m: DescMessage, plans: Plans<FieldPlan>): { kind: Kind; plan?: Plan } | undefined {
  if (m.typeName === "google.protobuf.Timestamp") return { kind: Kind.Timestamp };
  if (m.typeName === "google.protobuf.Struct") return { kind: Kind.Json };
  const plan = planOf(m, plans);
  return plan && { kind: Kind.Message, plan };
}

function namesOf(e: DescEnum): Map<number, string> {
  return new Map(e.values.map((v) => [v.number, v.name]));
}

type Fields = Record<string, unknown>;

function messageJson(plan: Plan, message: object): Fields {
  const m = message as Fields;
  if (m.$typeName !== plan.typeName) throw UNSUPPORTED; // protobuf-es refuses a message of another type
  const out: Fields = {};
  for (const f of plan.fields) {
    let v: unknown;
    if (f.oneof !== undefined) {
      const group = m[f.oneof] as { case?: string; value?: unknown } | undefined;
      if (group === undefined || group === null) throw UNSUPPORTED;
      if (group.case !== f.name) continue;
      v = group.value;
    } else {
      v = m[f.name];
      if (f.explicit && (v === undefined || !Object.prototype.hasOwnProperty.call(m, f.name))) continue;
    }
    if (v === undefined) throw UNSUPPORTED; // a oneof case without its value, or an implicit field left undefined
    out[f.json] = fieldJson(f, v);
  }
  return out;
}

function fieldJson(f: FieldPlan, v: unknown): unknown {
  switch (f.kind) {
    case Kind.Scalar:
      return scalarJson(f.scalar, v);
    case Kind.Enum:
      return enumJson(f.enumNames!, v);
    case Kind.Message:
      if (typeof v !== "object" || v === null) throw UNSUPPORTED;
      return messageJson(f.message!, v);
    case Kind.Timestamp:
      return timestampJson(v);
    case Kind.Json:
      return structJson(v);
    case Kind.ScalarList:
      return listJson(v, (x) => scalarJson(f.scalar, x));
    case Kind.EnumList:
      return listJson(v, (x) => enumJson(f.enumNames!, x));
    case Kind.MessageList:
      return listJson(v, (x) => {
        if (typeof x !== "object" || x === null) throw UNSUPPORTED;
        return messageJson(f.message!, x);
      });
    case Kind.TimestampList:
      return listJson(v, timestampJson);
    case Kind.JsonList:
      return listJson(v, structJson);
  }
}

/** A list's items, each converted; a hole or an undefined item is left to protobuf-es. */
function listJson(v: unknown, item: (x: unknown) => unknown): unknown[] {
  if (!Array.isArray(v)) throw UNSUPPORTED;
  const out = new Array<unknown>(v.length);
  for (let i = 0; i < v.length; i++) {
    const x: unknown = v[i];
    if (x === undefined) throw UNSUPPORTED;
    out[i] = item(x);
  }
  return out;
}

function scalarJson(type: ScalarType, v: unknown): unknown {
  switch (type) {
    case ScalarType.STRING:
      if (typeof v !== "string") throw UNSUPPORTED;
      return v;
    case ScalarType.BOOL:
      if (typeof v !== "boolean") throw UNSUPPORTED;
      return v;
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      if (typeof v !== "number" || !Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw UNSUPPORTED;
      return v;
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > 0xffffffff) throw UNSUPPORTED;
      return v;
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      if (typeof v !== "bigint" || v < -(2n ** 63n) || v >= 2n ** 63n) throw UNSUPPORTED;
      return v.toString();
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      if (typeof v !== "bigint" || v < 0n || v >= 2n ** 64n) throw UNSUPPORTED;
      return v.toString();
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      if (typeof v !== "number") throw UNSUPPORTED;
      if (type === ScalarType.FLOAT && Number.isFinite(v) && Math.abs(v) > 3.4028234663852886e38) throw UNSUPPORTED;
      if (Number.isNaN(v)) return "NaN";
      if (v === Infinity) return "Infinity";
      if (v === -Infinity) return "-Infinity";
      return v;
    case ScalarType.BYTES:
      if (!(v instanceof Uint8Array)) throw UNSUPPORTED;
      return base64Encode(v, "std");
  }
}

function enumJson(names: Map<number, string>, v: unknown): unknown {
  if (typeof v !== "number") throw UNSUPPORTED;
  return names.get(v) ?? v;
}

/** google.protobuf.Timestamp in RFC 3339, as protobuf-es writes it. */
function timestampJson(v: unknown): string {
  if (typeof v !== "object" || v === null || (v as Fields).$typeName !== "google.protobuf.Timestamp") throw UNSUPPORTED;
  const { seconds, nanos } = v as { seconds: unknown; nanos: unknown };
  if (typeof seconds !== "bigint" || typeof nanos !== "number" || !Number.isInteger(nanos)) throw UNSUPPORTED;
  const ms = Number(seconds) * 1000;
  if (ms < MIN_TIMESTAMP_MS || ms > MAX_TIMESTAMP_MS || nanos < 0 || nanos > 999_999_999) throw UNSUPPORTED;
  let z = "Z";
  if (nanos > 0) {
    const digits = (nanos + 1_000_000_000).toString().substring(1);
    z = digits.endsWith("000000") ? `.${digits.substring(0, 3)}Z` : digits.endsWith("000") ? `.${digits.substring(0, 6)}Z` : `.${digits}Z`;
  }
  return new Date(ms).toISOString().replace(".000Z", z);
}

/** A Struct's JSON object, used as it is once it is known to hold plain JSON only. */
function structJson(v: unknown): unknown {
  if (!isPlainObject(v)) throw UNSUPPORTED;
  checkJson(v); // the object itself is checked as any nested one
  return v;
}

function checkJson(v: unknown): void {
  switch (typeof v) {
    case "string":
    case "boolean":
      return;
    case "number":
      if (!Number.isFinite(v)) throw UNSUPPORTED;
      return;
    case "object":
      if (v === null) return;
      if (Array.isArray(v)) {
        for (const x of v) checkJson(x);
        return;
      }
      if (!isPlainObject(v)) throw UNSUPPORTED;
      for (const k in v) {
        if (!Object.prototype.hasOwnProperty.call(v, k)) continue;
        if (k === "__proto__") throw UNSUPPORTED; // protobuf-es drops it (its Struct is a plain object)
        checkJson((v as Fields)[k]);
      }
      return;
    default:
      throw UNSUPPORTED;
  }
}

function isPlainObject(v: unknown): v is Fields {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}
