/**
 * Field checks shared by every domain service. Limits follow README.md ("Calling it": input limits): ids,
 * keys, names and descriptions are at most 255 characters; longer input is
 * INVALID_ARGUMENT, never truncated.
 */
import { invalidField } from "./errors.js";

export const MAX_TEXT = 255;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** A required identifier: 1-255 characters, no control characters. */
export function requireId(value: string, field: string): string {
  if (value === "") throw invalidField(field, "is required");
  return checkText(value, field);
}

/** An optional short text: at most 255 characters. */
export function checkText(value: string, field: string, max = MAX_TEXT): string {
  if ([...value].length > max) throw invalidField(field, `must be at most ${max} characters`);
  if (/[\u0000-\u001f\u007f]/.test(value) && max <= MAX_TEXT) throw invalidField(field, "must not contain control characters");
  // Longer texts may hold line breaks, but no text may hold what PostgreSQL cannot store.
  if (value.includes("\u0000")) throw invalidField(field, "must not contain NUL (\\u0000)");
  if (LONE_SURROGATE.test(value)) throw invalidField(field, "must be valid UTF-8 (it holds a lone surrogate)");
  return value;
}

/** `text` cut to at most `max` characters (code points, so no surrogate pair is split). */
export function truncateText(text: string, max = MAX_TEXT): string {
  const chars = [...text];
  return chars.length <= max ? text : chars.slice(0, max).join("");
}

/** An idempotency key: 1-255 characters. */
export function requireIdempotencyKey(value: string, field = "idempotency_key"): string {
  if (value === "") throw invalidField(field, "is required (1-255 characters) on every request that moves credits or money");
  return checkText(value, field);
}

/** A UUID-shaped opaque id (the form this service issues). */
export function requireUuid(value: string, field: string): string {
  requireId(value, field);
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value)) throw invalidField(field, "is not a valid id");
  return value.toLowerCase();
}

/** Limits on caller-given JSON (metadata), the same on every protocol (README.md, "Calling it": input limits). */
export const METADATA_MAX_DEPTH = 10;
export const METADATA_MAX_BYTES = 16 * 1024;

/**
 * Caller-given JSON (a google.protobuf.Struct) that can be stored in
 * PostgreSQL `jsonb` and answered back unchanged on every protocol: at most
 * METADATA_MAX_DEPTH levels (the object itself is level 1) and
 * METADATA_MAX_BYTES in its JSON form; every key and string well-formed
 * UTF-16 (no lone surrogates) without NUL; every number finite; no
 * "__proto__" key. The first offence is named by its path
 * (e.g. "metadata.a.b").
 */
export function checkMetadata(value: unknown, field = "metadata"): void {
  checkJsonValue(value, field, 1);
  const size = Buffer.byteLength(JSON.stringify(value ?? {}), "utf8");
  if (size > METADATA_MAX_BYTES) throw invalidField(field, `must be at most ${METADATA_MAX_BYTES} bytes as JSON (is ${size})`);
}

function checkJsonValue(value: unknown, path: string, depth: number): void {
  switch (typeof value) {
    case "string":
      checkJsonString(value, path, "value");
      return;
    case "number":
      if (!Number.isFinite(value)) throw invalidField(path, "must be a finite number");
      return;
    case "boolean":
      return;
    case "object": {
      if (value === null) return;
      if (depth > METADATA_MAX_DEPTH) throw invalidField(path, `must be nested at most ${METADATA_MAX_DEPTH} levels deep`);
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) checkJsonValue(value[i], `${path}[${i}]`, depth + 1);
        return;
      }
      for (const key of Object.keys(value)) {
        const at = `${path}.${key}`;
        checkJsonString(key, at, "key");
        if (key === "__proto__") throw invalidField(at, 'the key "__proto__" is not allowed');
        checkJsonValue((value as Record<string, unknown>)[key], at, depth + 1);
      }
      if (Object.getPrototypeOf(value) !== Object.prototype && Object.getPrototypeOf(value) !== null) {
        // An object whose prototype was replaced lost a "__proto__" key on the way in.
        throw invalidField(path, 'the key "__proto__" is not allowed');
      }
      return;
    }
    default:
      throw invalidField(path, `is not a JSON value (${typeof value})`);
  }
}

function checkJsonString(s: string, path: string, what: "key" | "value"): void {
  if (s.includes("\u0000")) throw invalidField(path, `the ${what} must not contain NUL (\\u0000)`);
  if (LONE_SURROGATE.test(s)) throw invalidField(path, `the ${what} must be valid UTF-8 (it holds a lone surrogate)`);
}
