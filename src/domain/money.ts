/**
 * The only place where decimal amounts are parsed, computed and formatted.
 *
 * Wire format: plain digits, an optional leading "-" where negatives are
 * allowed, an optional "." and at most `scale` decimals. No exponents, no
 * NaN/Infinity, no separators, no silent rounding: input that does not fit
 * its column is INVALID_ARGUMENT naming the field.
 */
import { Decimal } from "decimal.js";
import { invalidField } from "./errors.js";

/** A private Decimal constructor so global configuration cannot leak in. */
export const Dec = Decimal.clone({ precision: 60, rounding: Decimal.ROUND_HALF_UP, toExpNeg: -1000, toExpPos: 1000 });
export type Dec = Decimal;

/** The shape of a SQL NUMERIC(precision, scale) column. */
export interface MoneyColumn {
  precision: number;
  scale: number;
}

/** Invoice, payment and package amounts in USD (and every currency with 2 minor digits): 8 digits before the point. */
export const AMOUNT: MoneyColumn = { precision: 10, scale: 2 };

/**
 * ISO 4217 minor-unit digits of the currencies this service accepts. Three
 * lists cover every active code: those with 0 and 3 digits (and CLF/UYW
 * with 4) are named; the rest of the active codes have 2.
 */
const MINOR_DIGITS: Record<string, number> = {};
for (const c of "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(" ")) MINOR_DIGITS[c] = 0;
for (const c of "BHD IQD JOD KWD LYD OMR TND".split(" ")) MINOR_DIGITS[c] = 3;
for (const c of "CLF UYW".split(" ")) MINOR_DIGITS[c] = 4;
for (const c of (
  "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW " +
  "CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS " +
  "INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN " +
  "NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC " +
  "SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VES WST XCD YER ZAR ZMW ZWL"
).split(" "))
  MINOR_DIGITS[c] = 2;

/** The ISO 4217 minor-unit digits of `currency` (e.g. JPY 0, USD 2, KWD 3); undefined for an unknown code. */
export function minorDigits(currency: string): number | undefined {
  return Object.prototype.hasOwnProperty.call(MINOR_DIGITS, currency) ? MINOR_DIGITS[currency] : undefined;
}

/**
 * A known ISO 4217 code in capitals, or INVALID_ARGUMENT naming `field`:
 * amounts in a currency whose minor units are unknown could not be
 * exchanged with a payment provider exactly.
 */
export function requireCurrency(currency: string, field: string): string {
  if (!/^[A-Z]{3}$/.test(currency)) throw invalidField(field, "must be an ISO-4217 code in capitals, like USD");
  if (minorDigits(currency) === undefined) throw invalidField(field, `${currency} is not an ISO-4217 currency this service knows the minor units of`);
  return currency;
}

/**
 * The column shape of an amount in `currency`: as many decimals as the
 * currency has minor digits ("1500" JPY, "10.00" USD, "1.250" KWD), and 8
 * digits before the point, stored in NUMERIC(12,4) columns. An unknown
 * currency is treated as 2 digits (rows from before currencies were checked).
 */
export function amountIn(currency: string): MoneyColumn {
  const scale = minorDigits(currency) ?? 2;
  return { precision: 8 + scale, scale };
}

/** The widest amount column (4 decimals, as CLF): for input whose currency is decided later. */
export const ANY_AMOUNT: MoneyColumn = { precision: 12, scale: 4 };

/** An amount in the currency's minor units (integer), e.g. "15.00" USD -> 1500n, "1500" JPY -> 1500n. */
export function toMinorUnits(amount: Decimal.Value, digits: number): bigint {
  const minor = new Dec(amount).times(new Dec(10).pow(digits));
  if (!minor.isInteger()) throw new Error(`${String(amount)} has more than ${digits} decimals`);
  return BigInt(minor.toFixed(0));
}

/** An integer amount of minor units as a decimal string with `digits` decimals, e.g. 1500n, 2 -> "15.00". */
export function fromMinorUnits(minor: bigint, digits: number): string {
  return new Dec(minor.toString()).dividedBy(new Dec(10).pow(digits)).toFixed(digits);
}
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
