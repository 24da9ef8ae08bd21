/**
 * Field checks shared by every domain service. Limits follow API.md: ids,
 * keys, names and descriptions are at most 255 characters; longer input is
 * INVALID_ARGUMENT, never truncated.
 */
import { invalidField } from "./errors.js";

export const MAX_TEXT = 255;

/** A required identifier: 1-255 characters, no control characters. */
export function requireId(value: string, field: string): string {
  if (value === "") throw invalidField(field, "is required");
  return checkText(value, field);
}

/** An optional short text: at most 255 characters. */
export function checkText(value: string, field: string, max = MAX_TEXT): string {
  if ([...value].length > max) throw invalidField(field, `must be at most ${max} characters`);
  if (/[\u0000-\u001f\u007f]/.test(value) && max <= MAX_TEXT) throw invalidField(field, "must not contain control characters");
  return value;
}

/** An idempotency key: 1-255 characters. */
export function requireIdempotencyKey(value: string, field = "idempotency_key"): string {
  if (value === "") throw invalidField(field, "is required (1-255 characters) on every request that moves credits or money");
  return checkText(value, field);
}

/** A positive int64. */
export function requirePositive(value: bigint, field: string): bigint {
  if (value <= 0n) throw invalidField(field, "must be greater than zero");
  return value;
}

/** A non-negative int64. */
export function requireNonNegative(value: bigint, field: string): bigint {
  if (value < 0n) throw invalidField(field, "must not be negative");
  return value;
}

/** A UUID-shaped opaque id (the form this service issues). */
export function requireUuid(value: string, field: string): string {
  requireId(value, field);
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value)) throw invalidField(field, "is not a valid id");
  return value.toLowerCase();
}
