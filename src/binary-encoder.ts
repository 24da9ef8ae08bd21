/**
 * Protobuf binary encoding of response messages, compiled once per message
 * type from its descriptor: the same bytes as protobuf-es's `toBinary`, at
 * a fraction of its cost.
 *
 * `toBinary` walks every message through reflection (a wrapper object per
 * message, Struct fields converted to messages and back, a writer that
 * buffers each nested message in chunks and joins them). For a
 * DeductCredits answer (a ledger row, a usage log and a balance, with
 * metadata twice) that was ~9% of the service's CPU per call over gRPC.
 * Here a first pass measures the message (nested sizes and string lengths
 * are kept in order), and a second writes it into one buffer of exactly
 * that size.
 *
 * The same bytes, by construction and by test (test/encoders.test.ts
 * compares every message type of every service with `toBinary`, on
 * generated messages): fields in number order, proto3 implicit presence
 * (zero values are not written; -0 is), explicit presence by own property,
 * packed repeated scalars, map entries with key and value always written,
 * google.protobuf.Struct fields held as JSON objects (as protobuf-es holds
 * them) written as Struct, unknown fields last.
 * What it does not take, it leaves to `toBinary`, which then says what is
 * wrong as it always has: a message type with a map field (outside Struct),
 * a group, or a wrapper-typed field is encoded by `toBinary` whole; so is
 * a message whose values are out of their type's range or of another type,
 * or whose shape `create()` would not give (a nested object without its
 * `$typeName`, an implicit field left undefined, a oneof case without its
 * value, a list with holes).
 */
import { ScalarType, toBinary, type DescField, type DescMessage } from "@bufbuild/protobuf";
import { planMessage, type MessagePlan, type Plans } from "./message-plan.js";

/** Encodes a message of one type into a new buffer, after `headroom` bytes left for the caller (an envelope header). */
export type BinaryEncoder = (message: object, headroom?: number) => Buffer;

const enum Kind {
  Scalar,
  Enum,
  Message,
  /** google.protobuf.Struct held as a JSON object. */
  Json,
  ScalarList,
  MessageList,
  JsonList,
}

interface FieldPlan {
  name: string;
  kind: Kind;
  tag: number;
  /** The oneof group's property, for a field in one. */
  oneof: string | undefined;
  /** Explicit presence: written when the property is its own and not undefined. */
  explicit: boolean;
  scalar: ScalarType;
  /** An enum's first value: its zero for implicit presence. */
  enumZero: number;
  packed: boolean;
  message: Plan | undefined;
}

type Plan = MessagePlan<FieldPlan>;

/** Anything this encoder leaves to toBinary (thrown while measuring, caught by the encoder). */
const UNSUPPORTED = Symbol("leave it to toBinary");

const LENGTH_DELIMITED = 2;
const STRUCT = "google.protobuf.Struct";
const VALUE = "google.protobuf.Value";
const WRAPPERS = /^google\.protobuf\.(Double|Float|Int64|UInt64|Int32|UInt32|Bool|String|Bytes)Value$/;
const IMPLICIT = 2; // google.protobuf.FeatureSet.FieldPresence.IMPLICIT

/** The encoder of `schema`'s messages (`toBinary` itself when the type holds a field this encoder does not take). */
export function binaryEncoder(schema: DescMessage): BinaryEncoder {
  const plan = planOf(schema, new Map());
  if (!plan) return (message, headroom = 0) => withHeadroom(toBinary(schema, message as never), headroom);
  return (message, headroom = 0) => {
    const state: Sizes = { s: [], i: 0 };
    let size: number;
    try {
      size = sizeMessage(plan, message, state);
    } catch (err) {
      if (err === UNSUPPORTED) return withHeadroom(toBinary(schema, message as never), headroom);
      throw err;
    }
    const buf = Buffer.allocUnsafe(headroom + size);
    const end = writeMessage(plan, message, buf, headroom, state);
    if (end !== headroom + size) throw new Error(`binary encoder: ${schema.typeName} measured ${size} bytes but wrote ${end - headroom}`);
    return buf;
  };
}

function withHeadroom(bytes: Uint8Array, headroom: number): Buffer {
  const buf = Buffer.allocUnsafe(headroom + bytes.length);
  buf.set(bytes, headroom);
  return buf;
}

/** The plan of a message type; undefined when it (or a type it holds) has a field this encoder does not take. */
function planOf(desc: DescMessage, plans: Plans<FieldPlan>): Plan | undefined {
  return planMessage(desc, plans, fieldPlan);
}

function fieldPlan(f: DescField, plans: Plans<FieldPlan>): FieldPlan | undefined {
  const base = {
    name: f.localName,
    oneof: f.oneof?.localName,
    explicit: f.oneof === undefined && f.presence !== IMPLICIT,
    scalar: ScalarType.INT32,
    enumZero: 0,
    packed: false,
    message: undefined as Plan | undefined,
  };
  // A Struct is held as a JSON object wherever it is used, except inside google.protobuf.Value.
  const json = (m: DescMessage) => m.typeName === STRUCT && f.parent.typeName !== VALUE;
  switch (f.fieldKind) {
    case "scalar":
      return { ...base, kind: Kind.Scalar, scalar: f.scalar, tag: tagOf(f.number, wireTypeOf(f.scalar)) };
    case "enum":
      return { ...base, kind: Kind.Enum, enumZero: f.enum.values[0]?.number ?? 0, tag: tagOf(f.number, 0) };
    case "message": {
      if (f.delimitedEncoding) return undefined;
      if (json(f.message)) return { ...base, kind: Kind.Json, tag: tagOf(f.number, LENGTH_DELIMITED) };
      if (WRAPPERS.test(f.message.typeName) && f.oneof === undefined) return undefined; // held unwrapped
      const message = planOf(f.message, plans);
      return message && { ...base, kind: Kind.Message, message, tag: tagOf(f.number, LENGTH_DELIMITED) };
    }
    case "list":
      if (f.listKind === "message") {
        if (f.delimitedEncoding) return undefined;
        if (json(f.message)) return { ...base, explicit: false, kind: Kind.JsonList, tag: tagOf(f.number, LENGTH_DELIMITED) };
        const message = planOf(f.message, plans);
        return message && { ...base, explicit: false, kind: Kind.MessageList, message, tag: tagOf(f.number, LENGTH_DELIMITED) };
      }
      {
        const scalar = f.listKind === "enum" ? ScalarType.INT32 : f.scalar;
        return { ...base, explicit: false, kind: Kind.ScalarList, scalar, packed: f.packed, tag: tagOf(f.number, f.packed ? LENGTH_DELIMITED : wireTypeOf(scalar)) };
      }
    case "map":
      return undefined;
  }
}

function tagOf(number: number, wireType: number): number {
  return ((number << 3) | wireType) >>> 0;
}

function wireTypeOf(type: ScalarType): number {
  switch (type) {
    case ScalarType.STRING:
    case ScalarType.BYTES:
      return LENGTH_DELIMITED;
    case ScalarType.DOUBLE:
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return 1;
    case ScalarType.FLOAT:
    case ScalarType.FIXED32:
    case ScalarType.SFIXED32:
      return 5;
    default:
      return 0;
  }
}

// ---- Measuring. Nested message sizes and string byte lengths are pushed in
// the order the writing pass takes them back.

interface Sizes {
  s: number[];
  i: number;
}

type Fields = Record<string, unknown>;

/** The field's value if it is to be written; undefined when it is not set. */
function valueOf(f: FieldPlan, m: Fields): unknown {
  if (f.oneof !== undefined) {
    const group = m[f.oneof] as { case?: string; value?: unknown } | undefined;
    if (group === undefined || group === null) throw UNSUPPORTED;
    if (group.case !== f.name) return undefined;
    if (group.value === undefined) throw UNSUPPORTED; // protobuf-es writes the case with a zero value
    return group.value;
  }
  const v = m[f.name];
  if (f.explicit) return v !== undefined && Object.prototype.hasOwnProperty.call(m, f.name) ? v : undefined;
  if (v === undefined) throw UNSUPPORTED; // protobuf-es writes an implicit field it finds undefined
  switch (f.kind) {
    case Kind.Scalar:
      return isZero(f.scalar, v) ? undefined : v;
    case Kind.Enum:
      return v === f.enumZero ? undefined : v;
    case Kind.ScalarList:
    case Kind.MessageList:
    case Kind.JsonList:
      if (!Array.isArray(v)) throw UNSUPPORTED;
      return v.length > 0 ? v : undefined;
    default:
      return v;
  }
}

function isZero(type: ScalarType, v: unknown): boolean {
  switch (type) {
    case ScalarType.BOOL:
      return v === false;
    case ScalarType.STRING:
      return v === "";
    case ScalarType.BYTES:
      return v instanceof Uint8Array && v.byteLength === 0;
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return Object.is(v, 0);
    default:
      return v === 0n || v == 0; // 0, 0n and "0", as protobuf-es
  }
}

function sizeMessage(plan: Plan, message: object, st: Sizes): number {
  const m = message as Fields;
  if (m.$typeName !== plan.typeName) throw UNSUPPORTED; // protobuf-es refuses a message of another type
  let n = 0;
  for (const f of plan.fields) {
    const v = valueOf(f, m);
    if (v === undefined) continue;
    switch (f.kind) {
      case Kind.Scalar:
        n += varintSize(f.tag) + scalarSize(f.scalar, v, st);
        break;
      case Kind.Enum:
        n += varintSize(f.tag) + scalarSize(ScalarType.INT32, v, st);
        break;
      case Kind.Message:
        n += varintSize(f.tag) + nestedMessage(f.message!, v, st);
        break;
      case Kind.Json:
        n += varintSize(f.tag) + nestedStruct(v, st);
        break;
      case Kind.MessageList:
        for (const item of v as unknown[]) n += varintSize(f.tag) + nestedMessage(f.message!, item, st);
        break;
      case Kind.JsonList:
        for (const item of v as unknown[]) n += varintSize(f.tag) + nestedStruct(item, st);
        break;
      case Kind.ScalarList:
        if (f.packed) {
          const at = openSlot(st);
          let body = 0;
          for (const item of v as unknown[]) body += scalarSize(f.scalar, item, st);
          n += varintSize(f.tag) + closeSlot(st, at, body);
        } else for (const item of v as unknown[]) n += varintSize(f.tag) + scalarSize(f.scalar, item, st);
        break;
    }
  }
  const unknown = m.$unknown as Unknown[] | undefined | null;
  if (unknown !== undefined && unknown !== null) {
    if (!Array.isArray(unknown)) throw UNSUPPORTED;
    for (const u of unknown) n += varintSize(tagOf(u.no, u.wireType)) + u.data.byteLength;
  }
  return n;
}

type Unknown = { no: number; wireType: number; data: Uint8Array };

/** A nested message's size with its length prefix; the size itself is kept for the writing pass. */
function nestedMessage(plan: Plan, v: unknown, st: Sizes): number {
  if (typeof v !== "object" || v === null) throw UNSUPPORTED;
  const at = openSlot(st);
  return closeSlot(st, at, sizeMessage(plan, v, st));
}

/** Reserves the place of a length the writing pass will need, before what it measures pushes its own. */
function openSlot(st: Sizes): number {
  st.s.push(0);
  return st.s.length - 1;
}

/** Fills the slot with the measured length; returns it with its varint prefix. */
function closeSlot(st: Sizes, at: number, size: number): number {
  st.s[at] = size;
  return varintSize(size) + size;
}

/** The same for a Struct held as a JSON object. */
function nestedStruct(v: unknown, st: Sizes): number {
  const at = openSlot(st);
  return closeSlot(st, at, sizeStruct(v, st));
}

function sizeStruct(json: unknown, st: Sizes): number {
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw UNSUPPORTED;
  let n = 0;
  for (const key in json as Fields) {
    if (!Object.prototype.hasOwnProperty.call(json, key)) continue;
    if (key === "__proto__") throw UNSUPPORTED; // protobuf-es drops it (its Struct is a plain object)
    const at = openSlot(st);
    n += 1 + closeSlot(st, at, 1 + stringSize(key, st) + 1 + nestedValue(st, (json as Fields)[key]));
  }
  return n;
}

/** A google.protobuf.Value's size with its length prefix (its slot pushed first). */
function nestedValue(st: Sizes, v: unknown): number {
  const at = openSlot(st);
  return closeSlot(st, at, sizeValue(v, st));
}

function sizeValue(v: unknown, st: Sizes): number {
  switch (typeof v) {
    case "number":
      return 9;
    case "string":
      return 1 + stringSize(v, st);
    case "boolean":
      return 2;
    case "object": {
      if (v === null) return 2;
      if (!Array.isArray(v)) return 1 + nestedStruct(v, st);
      const at = openSlot(st);
      let body = 0;
      for (const item of v) body += 1 + nestedValue(st, item);
      return 1 + closeSlot(st, at, body);
    }
    default:
      return 0; // undefined and the like: a Value with no kind, as protobuf-es writes it
  }
}

function stringSize(v: unknown, st: Sizes): number {
  if (typeof v !== "string") throw UNSUPPORTED;
  const len = utf8Length(v);
  st.s.push(len);
  return varintSize(len) + len;
}

function scalarSize(type: ScalarType, v: unknown, st: Sizes): number {
  switch (type) {
    case ScalarType.STRING:
      return stringSize(v, st);
    case ScalarType.BOOL:
      if (typeof v !== "boolean") throw UNSUPPORTED;
      return 1;
    case ScalarType.INT32:
      if (!isInt32(v)) throw UNSUPPORTED;
      return v < 0 ? 10 : varintSize(v);
    case ScalarType.UINT32:
      if (!isUint32(v)) throw UNSUPPORTED;
      return varintSize(v);
    case ScalarType.SINT32:
      if (!isInt32(v)) throw UNSUPPORTED;
      return varintSize(((v << 1) ^ (v >> 31)) >>> 0);
    case ScalarType.INT64:
    case ScalarType.UINT64: {
      // Most 64-bit values (ids, credits, tokens) are small and not negative: sized as a number.
      const n = typeof v === "bigint" ? Number(v) : -1;
      if (n >= 0 && n <= Number.MAX_SAFE_INTEGER) return varintSizeSafe(n);
      return varint64Size(int64(v, type === ScalarType.INT64));
    }
    case ScalarType.SINT64: {
      const x = int64(v, true);
      return varint64Size(BigInt.asUintN(64, (x << 1n) ^ (x < 0n ? -1n : 0n)));
    }
    case ScalarType.FIXED64:
      int64(v, false);
      return 8;
    case ScalarType.SFIXED64:
      int64(v, true);
      return 8;
    case ScalarType.DOUBLE:
      if (typeof v !== "number") throw UNSUPPORTED;
      return 8;
    case ScalarType.FLOAT:
      if (typeof v !== "number" || (Number.isFinite(v) && Math.abs(v) > 3.4028234663852886e38)) throw UNSUPPORTED;
      return 4;
    case ScalarType.FIXED32:
      if (!isUint32(v)) throw UNSUPPORTED;
      return 4;
    case ScalarType.SFIXED32:
      if (!isInt32(v)) throw UNSUPPORTED;
      return 4;
    case ScalarType.BYTES:
      if (!(v instanceof Uint8Array)) throw UNSUPPORTED;
      return varintSize(v.byteLength) + v.byteLength;
  }
}

function isInt32(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= -0x80000000 && v <= 0x7fffffff;
}

function isUint32(v: unknown): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

const MIN_INT64 = -(2n ** 63n);
const MAX_INT64 = 2n ** 63n - 1n;
const MAX_UINT64 = 2n ** 64n - 1n;

/** A 64-bit value as its unsigned 64-bit pattern (bigint only; anything else is left to toBinary). */
function int64(v: unknown, signed: boolean): bigint {
  if (typeof v !== "bigint") throw UNSUPPORTED;
  if (signed ? v < MIN_INT64 || v > MAX_INT64 : v < 0n || v > MAX_UINT64) throw UNSUPPORTED;
  return v;
}

function varintSize(n: number): number {
  return n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5;
}

/** The varint size of a safe integer ≥ 0 (up to 2^53: 8 bytes). */
function varintSizeSafe(n: number): number {
  if (n < 0x10000000) return varintSize(n);
  let size = 4;
  for (n = Math.floor(n / 0x10000000); n > 0; n = Math.floor(n / 0x80)) size++;
  return size;
}

function varint64Size(v: bigint): number {
  let u = BigInt.asUintN(64, v);
  if (u < 0x10000000n) return varintSize(Number(u));
  let n = 1;
  while (u >= 0x80n) {
    u >>= 7n;
    n++;
  }
  return n;
}

/** UTF-8 byte length, with lone surrogates as U+FFFD (3 bytes), as TextEncoder and Buffer write them. */
function utf8Length(s: string): number {
  if (s.length > 64) return Buffer.byteLength(s, "utf8");
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

// ---- Writing, in the order measuring went: each nested size and string
// length is taken back from the list as its field is written.

function writeMessage(plan: Plan, message: object, buf: Buffer, pos: number, st: Sizes): number {
  const m = message as Fields;
  for (const f of plan.fields) {
    const v = valueOf(f, m);
    if (v === undefined) continue;
    switch (f.kind) {
      case Kind.Scalar:
        pos = writeScalar(f.scalar, v, buf, writeVarint(buf, pos, f.tag), st);
        break;
      case Kind.Enum:
        pos = writeScalar(ScalarType.INT32, v, buf, writeVarint(buf, pos, f.tag), st);
        break;
      case Kind.Message:
        pos = writeMessage(f.message!, v as object, buf, writeVarint(buf, writeVarint(buf, pos, f.tag), st.s[st.i++]!), st);
        break;
      case Kind.Json:
        pos = writeStruct(v as Fields, buf, writeVarint(buf, writeVarint(buf, pos, f.tag), st.s[st.i++]!), st);
        break;
      case Kind.MessageList:
        for (const item of v as object[]) pos = writeMessage(f.message!, item, buf, writeVarint(buf, writeVarint(buf, pos, f.tag), st.s[st.i++]!), st);
        break;
      case Kind.JsonList:
        for (const item of v as Fields[]) pos = writeStruct(item, buf, writeVarint(buf, writeVarint(buf, pos, f.tag), st.s[st.i++]!), st);
        break;
      case Kind.ScalarList:
        if (f.packed) {
          pos = writeVarint(buf, writeVarint(buf, pos, f.tag), st.s[st.i++]!);
          for (const item of v as unknown[]) pos = writeScalar(f.scalar, item, buf, pos, st);
        } else for (const item of v as unknown[]) pos = writeScalar(f.scalar, item, buf, writeVarint(buf, pos, f.tag), st);
        break;
    }
  }
  const unknown = m.$unknown as Unknown[] | undefined | null;
  if (unknown !== undefined && unknown !== null)
    for (const u of unknown) {
      pos = writeVarint(buf, pos, tagOf(u.no, u.wireType));
      buf.set(u.data, pos);
      pos += u.data.byteLength;
    }
  return pos;
}

/** A Struct's fields: map entries {1: key, 2: Value}. */
function writeStruct(json: Fields, buf: Buffer, pos: number, st: Sizes): number {
  for (const key in json) {
    if (!Object.prototype.hasOwnProperty.call(json, key)) continue;
    buf[pos++] = 0x0a; // fields = 1, length-delimited
    pos = writeVarint(buf, pos, st.s[st.i++]!);
    buf[pos++] = 0x0a; // key = 1
    pos = writeString(key, buf, pos, st);
    buf[pos++] = 0x12; // value = 2
    pos = writeValue(json[key], buf, writeVarint(buf, pos, st.s[st.i++]!), st);
  }
  return pos;
}

/** A google.protobuf.Value's fields, from the JSON value it stands for. */
function writeValue(v: unknown, buf: Buffer, pos: number, st: Sizes): number {
  switch (typeof v) {
    case "number":
      buf[pos++] = 0x11; // number_value = 2, 64-bit
      return buf.writeDoubleLE(v, pos);
    case "string":
      buf[pos++] = 0x1a; // string_value = 3
      return writeString(v, buf, pos, st);
    case "boolean":
      buf[pos++] = 0x20; // bool_value = 4
      buf[pos++] = v ? 1 : 0;
      return pos;
    case "object": {
      if (v === null) {
        buf[pos++] = 0x08; // null_value = 1
        buf[pos++] = 0;
        return pos;
      }
      if (Array.isArray(v)) {
        buf[pos++] = 0x32; // list_value = 6
        pos = writeVarint(buf, pos, st.s[st.i++]!);
        for (const item of v) {
          buf[pos++] = 0x0a; // values = 1
          pos = writeValue(item, buf, writeVarint(buf, pos, st.s[st.i++]!), st);
        }
        return pos;
      }
      buf[pos++] = 0x2a; // struct_value = 5
      return writeStruct(v as Fields, buf, writeVarint(buf, pos, st.s[st.i++]!), st);
    }
    default:
      return pos;
  }
}

function writeScalar(type: ScalarType, v: unknown, buf: Buffer, pos: number, st: Sizes): number {
  switch (type) {
    case ScalarType.STRING:
      return writeString(v as string, buf, pos, st);
    case ScalarType.BOOL:
      buf[pos++] = v ? 1 : 0;
      return pos;
    case ScalarType.INT32:
      return (v as number) < 0 ? writeVarint64(buf, pos, BigInt(v as number)) : writeVarint(buf, pos, v as number);
    case ScalarType.UINT32:
      return writeVarint(buf, pos, v as number);
    case ScalarType.SINT32:
      return writeVarint(buf, pos, (((v as number) << 1) ^ ((v as number) >> 31)) >>> 0);
    case ScalarType.INT64:
    case ScalarType.UINT64: {
      const n = Number(v as bigint);
      return n >= 0 && n <= Number.MAX_SAFE_INTEGER ? writeVarintSafe(buf, pos, n) : writeVarint64(buf, pos, v as bigint);
    }
    case ScalarType.SINT64: {
      const x = v as bigint;
      return writeVarint64(buf, pos, (x << 1n) ^ (x < 0n ? -1n : 0n));
    }
    case ScalarType.FIXED64:
    case ScalarType.SFIXED64:
      return buf.writeBigUInt64LE(BigInt.asUintN(64, v as bigint), pos);
    case ScalarType.DOUBLE:
      return buf.writeDoubleLE(v as number, pos);
    case ScalarType.FLOAT:
      return buf.writeFloatLE(v as number, pos);
    case ScalarType.FIXED32:
      return buf.writeUInt32LE(v as number, pos);
    case ScalarType.SFIXED32:
      return buf.writeInt32LE(v as number, pos);
    case ScalarType.BYTES: {
      const b = v as Uint8Array;
      pos = writeVarint(buf, pos, b.byteLength);
      buf.set(b, pos);
      return pos + b.byteLength;
    }
  }
}

function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n > 0x7f) {
    buf[pos++] = (n & 0x7f) | 0x80;
    n = n >>> 7;
  }
  buf[pos++] = n;
  return pos;
}

/** A varint of a safe integer ≥ 0, without bigint arithmetic. */
function writeVarintSafe(buf: Buffer, pos: number, n: number): number {
  while (n > 0x7fffffff) {
    buf[pos++] = (n % 0x80) | 0x80;
    n = Math.floor(n / 0x80);
  }
  return writeVarint(buf, pos, n);
}

/** A 64-bit varint of the value's two's-complement pattern (negative values take 10 bytes). */
function writeVarint64(buf: Buffer, pos: number, v: bigint): number {
  let u = BigInt.asUintN(64, v);
  if (u < 0x10000000n) return writeVarint(buf, pos, Number(u));
  while (u > 0x7fn) {
    buf[pos++] = Number(u & 0x7fn) | 0x80;
    u >>= 7n;
  }
  buf[pos++] = Number(u);
  return pos;
}

/** A string's length (measured before) and UTF-8 bytes, lone surrogates as U+FFFD. */
function writeString(s: string, buf: Buffer, pos: number, st: Sizes): number {
  const len = st.s[st.i++]!;
  pos = writeVarint(buf, pos, len);
  if (s.length > 64) {
    const written = buf.write(s, pos, len, "utf8");
    if (written !== len) throw new Error(`binary encoder: a string measured ${len} bytes but wrote ${written}`);
    return pos + len;
  }
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) buf[pos++] = c;
    else if (c < 0x800) {
      buf[pos++] = 0xc0 | (c >> 6);
      buf[pos++] = 0x80 | (c & 0x3f);
    } else {
      if (c >= 0xd800 && c <= 0xdfff) {
        const d = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && (d & 0xfc00) === 0xdc00) {
          const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
          buf[pos++] = 0xf0 | (cp >> 18);
          buf[pos++] = 0x80 | ((cp >> 12) & 0x3f);
          buf[pos++] = 0x80 | ((cp >> 6) & 0x3f);
          buf[pos++] = 0x80 | (cp & 0x3f);
          continue;
        }
        c = 0xfffd;
      }
      buf[pos++] = 0xe0 | (c >> 12);
      buf[pos++] = 0x80 | ((c >> 6) & 0x3f);
      buf[pos++] = 0x80 | (c & 0x3f);
    }
  }
  return pos;
}

/** Whether `binaryEncoder` encodes `schema`'s messages itself (rather than through toBinary). */
export function encodesItself(schema: DescMessage): boolean {
  return planOf(schema, new Map()) !== undefined;
}
