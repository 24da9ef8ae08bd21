/**
 * Strict reading of request bodies (README.md, "Calling it": input limits): Connect JSON
 * read as canonical proto3 JSON only, and no "__proto__" map key on any
 * codec.
 *
 * protobuf-es reads proto3 JSON leniently: int64 strings go through
 * `BigInt()` (so "0x10" is 16, " 1", "+1" and "" are accepted), unknown
 * fields can be ignored, a "__proto__" key of a Struct is lost on the way
 * in, and a byte-order mark or invalid UTF-8 is tolerated by the decoder in
 * front of it. Callers in other languages must not find a request accepted
 * here that their own canonical encoder would never write, nor one silently
 * read as something else. So the body is first decoded as UTF-8 (fatal), then
 * parsed, then checked field by field against the request message's
 * descriptor, and only then handed to protobuf-es. Every refusal is
 * INVALID_ARGUMENT naming the field by its proto path (e.g. "usage.credits").
 */
import { fromJson, ScalarType, type DescField, type DescMessage, type JsonValue } from "@bufbuild/protobuf";
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { invalidField } from "./domain/errors.js";

const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
/** How deep request JSON may nest at all (message nesting included). */
const MAX_JSON_DEPTH = 64;
/** Canonical decimal integers: no sign but "-", no leading zeros, no "-0", no spaces. */
const CANONICAL_INTEGER = /^(?:0|-?[1-9][0-9]*)$/;
const INT64_RANGE: Record<"signed" | "unsigned", [bigint, bigint]> = {
  signed: [-(2n ** 63n), 2n ** 63n - 1n],
  unsigned: [0n, 2n ** 64n - 1n],
};
const INT32_RANGE: Record<"signed" | "unsigned", [number, number]> = {
  signed: [-(2 ** 31), 2 ** 31 - 1],
  unsigned: [0, 2 ** 32 - 1],
};
/** Well-known types with a JSON form of their own; Struct-like ones are still checked for "__proto__". */
const STRUCT_LIKE = new Set(["google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"]);

/** Parses a Connect JSON request body into a message of `schema`, strictly. */
export function readStrictJson<T>(schema: DescMessage, body: Uint8Array): T {
  let text: string;
  try {
    text = UTF8.decode(body);
  } catch {
    throw invalidField("body", "is not valid UTF-8");
  }
  if (text.charCodeAt(0) === 0xfeff) throw invalidField("body", "must not start with a byte-order mark");
  let json: JsonValue;
  try {
    json = JSON.parse(text) as JsonValue;
  } catch (err) {
    throw invalidField("body", `is not valid JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  checkMessage(schema, json, "", 1);
  try {
    return fromJson(schema, json, { ignoreUnknownFields: false }) as T;
  } catch (err) {
    // protobuf-es names the field it could not read: "cannot decode field pkg.Message.field from JSON: ...".
    const message = err instanceof Error ? err.message : String(err);
    const named = /cannot decode (?:field|message) ([\w.]+)/.exec(message);
    throw invalidField(named ? fieldPathOf(named[1]!) : "body", message);
  }
}

function fieldPathOf(qualified: string): string {
  return qualified.slice(qualified.lastIndexOf(".") + 1);
}

function join(path: string, name: string): string {
  return path === "" ? name : `${path}.${name}`;
}

function checkMessage(schema: DescMessage, json: unknown, path: string, depth: number): void {
  if (depth > MAX_JSON_DEPTH) throw invalidField(path, `must not be nested more than ${MAX_JSON_DEPTH} levels deep`);
  if (STRUCT_LIKE.has(schema.typeName)) return checkStructLike(json, path, depth);
  if (schema.typeName.startsWith("google.protobuf.")) return; // Timestamp, Duration, FieldMask, wrappers: protobuf-es checks their forms
  if (typeof json !== "object" || json === null || Array.isArray(json)) throw invalidField(path || "body", "must be a JSON object");
  for (const key of Object.keys(json)) {
    const field = schema.fields.find((f) => f.jsonName === key || f.name === key);
    if (!field) throw invalidField(join(path, key), `is not a field of ${schema.typeName}`);
    const value = (json as Record<string, unknown>)[key];
    if (value === null) continue; // null means the default value
    checkField(field, value, join(path, field.name), depth);
  }
}

function checkField(field: DescField, value: unknown, path: string, depth: number): void {
  switch (field.fieldKind) {
    case "scalar":
      return checkScalar(field.scalar, value, path);
    case "enum":
      return; // names and numbers are checked by protobuf-es, which names the field
    case "message":
      return checkMessage(field.message, value, path, depth + 1);
    case "list": {
      if (!Array.isArray(value)) throw invalidField(path, "must be a JSON array");
      value.forEach((item, i) => {
        const at = `${path}[${i}]`;
        if (field.listKind === "scalar") checkScalar(field.scalar, item, at);
        else if (field.listKind === "message") checkMessage(field.message, item, at, depth + 1);
      });
      return;
    }
    case "map": {
      if (typeof value !== "object" || value === null || Array.isArray(value)) throw invalidField(path, "must be a JSON object");
      for (const [k, item] of Object.entries(value)) {
        const at = `${path}.${k}`;
        if (field.mapKind === "scalar") checkScalar(field.scalar, item, at);
        else if (field.mapKind === "message") checkMessage(field.message, item, at, depth + 1);
      }
      return;
    }
  }
}

function checkScalar(type: ScalarType, value: unknown, path: string): void {
  switch (type) {
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return checkInteger(value, path, INT64_RANGE.signed);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return checkInteger(value, path, INT64_RANGE.unsigned);
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return checkInteger(value, path, INT32_RANGE.signed);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return checkInteger(value, path, INT32_RANGE.unsigned);
    case ScalarType.BOOL:
      if (typeof value !== "boolean") throw invalidField(path, "must be true or false");
      return;
    case ScalarType.STRING:
      if (typeof value !== "string") throw invalidField(path, "must be a JSON string");
      return;
    default:
      return; // bytes, float, double: protobuf-es checks their forms
  }
}

/** An integer as a JSON number (exact, not -0) or a canonical decimal string, within `range`. */
function checkInteger(value: unknown, path: string, range: [bigint, bigint] | [number, number]): void {
  let n: bigint;
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || Object.is(value, -0)) throw invalidField(path, "must be an integer (as a JSON number up to 2^53, or a decimal string)");
    n = BigInt(value);
  } else if (typeof value === "string") {
    if (!CANONICAL_INTEGER.test(value)) throw invalidField(path, `must be a decimal integer without sign, spaces or leading zeros (got ${JSON.stringify(value.slice(0, 40))})`);
    n = BigInt(value);
  } else {
    throw invalidField(path, "must be an integer");
  }
  if (n < BigInt(range[0]) || n > BigInt(range[1])) throw invalidField(path, `must be between ${range[0]} and ${range[1]}`);
}

/**
 * Struct, Value and ListValue: any JSON, but no "__proto__" key (it would be
 * dropped on the way in), and not nested past MAX_JSON_DEPTH (the domain's
 * limits are far lower; this only keeps the walk off the stack's end).
 */
function checkStructLike(json: unknown, path: string, depth = 1): void {
  if (typeof json !== "object" || json === null) return;
  if (depth > MAX_JSON_DEPTH) throw invalidField(path, `must not be nested more than ${MAX_JSON_DEPTH} levels deep`);
  if (Array.isArray(json)) {
    json.forEach((item, i) => checkStructLike(item, `${path}[${i}]`, depth + 1));
    return;
  }
  for (const key of Object.keys(json)) {
    const at = join(path, key);
    if (key === "__proto__") throw invalidField(at, 'the key "__proto__" is not allowed');
    checkStructLike((json as Record<string, unknown>)[key], at, depth + 1);
  }
}

const PROTO_KEY = Buffer.from("__proto__");

/**
 * Binary requests: protobuf-es reads a map entry keyed "__proto__" (e.g. in
 * a Struct) by assignment, which drops it silently. Refuse such a request
 * instead, naming the field. The walk over the wire runs only when the bytes
 * hold "__proto__" at all.
 */
export function refuseProtoKeys(schema: DescMessage, bytes: Uint8Array): void {
  if (Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).indexOf(PROTO_KEY) < 0) return;
  let at: string | undefined;
  try {
    at = protoKeyIn(schema, bytes, "");
  } catch {
    return; // not a valid message: parsing it says so
  }
  if (at !== undefined) throw invalidField(at, 'the key "__proto__" is not allowed');
}

/** The path of a "__proto__" map key in a message's wire bytes, if there is one. */
function protoKeyIn(schema: DescMessage, bytes: Uint8Array, path: string): string | undefined {
  const reader = new BinaryReader(bytes);
  while (reader.pos < reader.len) {
    const [no, wireType] = reader.tag();
    const field = schema.fields.find((f) => f.number === no);
    if (!field || wireType !== WireType.LengthDelimited) {
      reader.skip(wireType, no);
      continue;
    }
    const data = reader.bytes();
    const at = join(path, field.name);
    if (field.fieldKind === "map") {
      const entry = new BinaryReader(data);
      let key: string | undefined;
      let value: Uint8Array | undefined;
      while (entry.pos < entry.len) {
        const [n, t] = entry.tag();
        if (n === 1 && t === WireType.LengthDelimited && field.mapKey === ScalarType.STRING) key = entry.string();
        else if (n === 2 && t === WireType.LengthDelimited && field.mapKind === "message") value = entry.bytes();
        else entry.skip(t, n);
      }
      if (key === "__proto__") return `${at}.__proto__`;
      if (value && field.mapKind === "message") {
        const inner = protoKeyIn(field.message, value, `${at}.${key ?? ""}`);
        if (inner !== undefined) return inner;
      }
    } else if (field.fieldKind === "message" || (field.fieldKind === "list" && field.listKind === "message")) {
      const inner = protoKeyIn(field.message, data, at);
      if (inner !== undefined) return inner;
    }
  }
  return undefined;
}
