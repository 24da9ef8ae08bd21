/**
 * Calendar dates (google.type.Date on the wire, DATE in SQL, "YYYY-MM-DD"
 * in the domain). Only full dates are accepted.
 */
import { invalidField } from "./errors.js";

/** A google.type.Date-shaped value. */
export interface CalendarDate {
  year: number;
  month: number;
  day: number;
}

/** "YYYY-MM-DD" for a full, real date; undefined for an unset date; INVALID_ARGUMENT otherwise. */
export function parseCalendarDate(value: CalendarDate | undefined, field: string): string | undefined {
  if (!value) return undefined;
  const { year, month, day } = value;
  if (year === 0 && month === 0 && day === 0) return undefined;
  const valid =
    Number.isInteger(year) && year >= 1 && year <= 9999 &&
    Number.isInteger(month) && month >= 1 && month <= 12 &&
    Number.isInteger(day) && day >= 1 && day <= new Date(Date.UTC(year, month, 0)).getUTCDate();
  if (!valid) throw invalidField(field, "must be a full calendar date (year 1-9999, month 1-12, a day of that month)");
  return `${String(year).padStart(4, "0")}-${String(month).padStart(2, "0")}-${String(day).padStart(2, "0")}`;
}

/** Today's date in UTC as "YYYY-MM-DD". */
export function todayUtc(now = new Date()): string {
  return now.toISOString().slice(0, 10);
}

/**
 * "YYYY-MM-DD" of a SQL DATE as the driver returns it: node-postgres turns
 * DATE into a local-midnight Date unless a query formats it, so both forms
 * are accepted.
 */
export function isoDateOf(value: string | Date | null | undefined): string {
  if (!value) return "";
  if (value instanceof Date) {
    const pad = (n: number) => String(n).padStart(2, "0");
    return `${String(value.getFullYear()).padStart(4, "0")}-${pad(value.getMonth() + 1)}-${pad(value.getDate())}`;
  }
  return value.slice(0, 10);
}
