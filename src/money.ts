/**
 * The only place where decimal amounts are parsed, computed and formatted.
 *
 * Wire format: plain digits, an optional leading "-" where negatives are
 * allowed, an optional "." and at most `scale` decimals. No exponents, no
 * NaN/Infinity, no separators, no silent rounding: input that does not fit
 * its column is INVALID_ARGUMENT naming the field.
 */
import { Decimal } from "decimal.js";
import { invalidField } from "./domain/errors.js";

/** A private Decimal constructor so global configuration cannot leak in. */
export const Dec = Decimal.clone({ precision: 60, rounding: Decimal.ROUND_HALF_UP, toExpNeg: -1000, toExpPos: 1000 });
export type Dec = Decimal;

/** The shape of a SQL NUMERIC(precision, scale) column. */
export interface MoneyColumn {
  precision: number;
  scale: number;
}

/** Invoice, payment and package amounts: NUMERIC(10,2). */
export const AMOUNT: MoneyColumn = { precision: 10, scale: 2 };
/** USD costs and prices per credit, per 1M tokens or per image: NUMERIC(10,4). */
export const PRICE: MoneyColumn = { precision: 10, scale: 4 };

const DECIMAL_RE = /^(-?)(\d+)(?:\.(\d+))?$/;

export interface ParseOptions {
  allowNegative?: boolean;
  /** Reject zero (e.g. a payment amount). */
  positive?: boolean;
  /** Smallest allowed value, inclusive (e.g. "0.0001" for prices). */
  min?: string;
}

/**
 * Parses a wire decimal for `field` into a Decimal that fits `column`.
 * @throws BillingError INVALID_ARGUMENT naming `field`
 */
export function parseMoney(value: string, field: string, column: MoneyColumn, options: ParseOptions = {}): Decimal {
  const m = DECIMAL_RE.exec(value);
  if (!m) {
    throw invalidField(field, `must be a decimal string like "12.50" (digits, optional "." and up to ${column.scale} decimals), got ${JSON.stringify(truncate(value))}`);
  }
  const [, sign, whole = "", frac = ""] = m;
  if (sign && !options.allowNegative) throw invalidField(field, "must not be negative");
  if (frac.length > column.scale) throw invalidField(field, `has more than ${column.scale} decimal places`);
  const intDigits = whole.replace(/^0+(?=\d)/, "").length;
  const maxInt = column.precision - column.scale;
  if (intDigits > maxInt && whole.replace(/^0+/, "") !== "") {
    throw invalidField(field, `must be less than 10^${maxInt}`);
  }
  const d = new Dec(value);
  if (options.positive && d.lte(0)) throw invalidField(field, "must be greater than zero");
  if (options.min !== undefined && d.lt(options.min)) throw invalidField(field, `must be at least ${options.min}`);
  return d;
}

/** Parses an optional wire decimal: the empty string means "not given". */
export function parseOptionalMoney(value: string, field: string, column: MoneyColumn, options: ParseOptions = {}): Decimal | undefined {
  return value === "" ? undefined : parseMoney(value, field, column, options);
}

/** Formats with the column's full scale ("10.00"), rounding half-up. */
export function formatMoney(value: Decimal.Value, column: MoneyColumn): string {
  return new Dec(value).toFixed(column.scale, Decimal.ROUND_HALF_UP);
}

/** Formats a nullable SQL NUMERIC value; null becomes the empty string. */
export function formatOptionalMoney(value: Decimal.Value | null | undefined, column: MoneyColumn): string {
  return value === null || value === undefined ? "" : formatMoney(value, column);
}

/** Whether a computed value fits the column without rounding away digits before the point. */
export function fitsColumn(value: Decimal, column: MoneyColumn): boolean {
  return value.abs().lt(new Dec(10).pow(column.precision - column.scale));
}

/** Rounds to a whole number: "up" (ceiling), "down" (floor) or "nearest" (half-up). */
export function roundToInteger(value: Decimal, mode: "up" | "down" | "nearest"): bigint {
  const rounding = mode === "up" ? Decimal.ROUND_CEIL : mode === "down" ? Decimal.ROUND_FLOOR : Decimal.ROUND_HALF_UP;
  return BigInt(value.toDecimalPlaces(0, rounding).toFixed(0));
}

function truncate(s: string): string {
  return s.length > 40 ? s.slice(0, 40) + "…" : s;
}
