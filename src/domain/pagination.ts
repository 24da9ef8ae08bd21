/**
 * Keyset pagination (AIP-158): page_size 0 = 50, negative = INVALID_ARGUMENT,
 * above 500 = 500; page tokens are opaque, bound to the list and its filters,
 * and rejected as INVALID_ARGUMENT when tampered with or reused elsewhere.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { Violations, invalidField } from "./errors.js";

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 500;

// Tokens are signed so that callers cannot forge positions; a restart makes
// outstanding tokens invalid unless BILLING_SECRET_KEY is set.
let signingKey: Buffer = randomBytes(32);

/** Derives the token signing key from the service secret (called once at start). */
export function setPageTokenSecret(secret: string): void {
  signingKey = createHash("sha256").update("page-token:" + secret).digest();
}

/** The effective page size for a request's page_size. */
export function pageSize(requested: number): number {
  if (requested < 0) throw invalidField("page_size", "must not be negative");
  if (requested === 0) return DEFAULT_PAGE_SIZE;
  return Math.min(requested, MAX_PAGE_SIZE);
}

/** A position in a list: the sort key values of the last row returned. */
export type Position = (string | number)[];

/** Encodes the position after the last row of a page, bound to `list` and its `filters`. */
export function encodePageToken(list: string, filters: unknown, position: Position): string {
  const body = Buffer.from(JSON.stringify({ l: list, f: filterHash(filters), p: position })).toString("base64url");
  return `${body}.${sign(body)}`;
}

/** Decodes a page token for `list` with `filters`; the empty token means the first page. */
export function decodePageToken(token: string, list: string, filters: unknown): Position | undefined {
  if (token === "") return undefined;
  const bad = () => invalidField("page_token", "is not a valid page token for this request");
  const dot = token.indexOf(".");
  if (dot <= 0) throw bad();
  const body = token.slice(0, dot);
  const mac = Buffer.from(token.slice(dot + 1), "base64url");
  const expected = Buffer.from(sign(body), "base64url");
  if (mac.length !== expected.length || !timingSafeEqual(mac, expected)) throw bad();
  let parsed: { l?: unknown; f?: unknown; p?: unknown };
  try {
    parsed = JSON.parse(Buffer.from(body, "base64url").toString("utf8"));
  } catch {
    throw bad();
  }
  if (parsed.l !== list || parsed.f !== filterHash(filters) || !Array.isArray(parsed.p)) throw bad();
  return parsed.p as Position;
}

/** The type of each value of a position, checked when a token is read back. */
export type PositionShape = readonly ("string" | "digits" | "number" | "timestamp" | "uuid")[];

const SHAPE_CHECKS: Record<PositionShape[number], (x: unknown) => boolean> = {
  string: (x) => typeof x === "string",
  digits: (x) => typeof x === "string" && /^-?\d{1,20}$/.test(x),
  number: (x) => typeof x === "number" && Number.isFinite(x),
  timestamp: (x) => typeof x === "string" && !Number.isNaN(Date.parse(x)),
  uuid: (x) => typeof x === "string" && /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(x),
};

/**
 * The one reading of a list request's paging: its page size and the
 * position after which the page starts (undefined: the first page), with
 * the token checked against `list`, `filters` and the position's `shape`;
 * INVALID_ARGUMENT naming page_size or page_token otherwise.
 */
export function pageRequest(input: { pageSize: number; pageToken: string }, list: string, filters: unknown, shape: PositionShape): { size: number; after: Position | undefined } {
  const v = new Violations();
  const size = v.collect(() => pageSize(input.pageSize));
  const after = v.collect(() => {
    const position = decodePageToken(input.pageToken, list, filters);
    if (position && (position.length !== shape.length || !position.every((x, i) => SHAPE_CHECKS[shape[i]!](x)))) {
      throw invalidField("page_token", "is not a valid page token for this request");
    }
    return position;
  });
  v.throwIfAny(); // page_size and page_token are reported together
  return { size: size!, after };
}

/** One page of rows: fetch `size + 1` rows and pass them here. */
export function pageOf<T>(rows: T[], size: number, positionOf: (row: T) => Position, list: string, filters: unknown): { items: T[]; nextPageToken: string } {
  if (rows.length <= size) return { items: rows, nextPageToken: "" };
  const items = rows.slice(0, size);
  return { items, nextPageToken: encodePageToken(list, filters, positionOf(items[items.length - 1]!)) };
}

function sign(body: string): string {
  return createHmac("sha256", signingKey).update(body).digest("base64url").slice(0, 22);
}

function filterHash(filters: unknown): string {
  return createHash("sha256")
    .update(JSON.stringify(filters, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v instanceof Date ? v.toISOString() : v)))
    .digest("base64url")
    .slice(0, 16);
}
