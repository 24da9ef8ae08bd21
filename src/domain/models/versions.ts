/**
 * Price versions: the timeline rules shared by model prices
 * (model_price_versions, catalogue.ts) and operation pricing
 * (cost_config_versions, credits/pricing.ts).
 *
 * Rules (README.md, "Price versions"):
 * - A version is in force from its effective_from until the next live
 *   (not cancelled) version's effective_from. At any instant at most one is
 *   in force: the live one with the latest effective_from at or before it
 *   (two live versions of one record never start at the same instant, by a
 *   unique index); before a record's first version none is.
 * - effective_from defaults to now (the server's clock); a future instant
 *   schedules a version; an instant in the past needs `backdate` (admin
 *   only, like every version write) and is kept as a backdated version and a
 *   "backdate_*" history entry.
 * - Only a version not yet in force can be cancelled; cancelling it twice
 *   answers it as it is.
 */
import { sqlState } from "../../db/transaction.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField } from "../errors.js";

export type VersionState = "scheduled" | "in_force" | "superseded" | "cancelled";

/** What every version has, whatever it prices. */
export interface VersionTimes {
  id: string;
  effectiveFrom: Date;
  /** When the next live version takes over; undefined while none follows (or cancelled). */
  effectiveUntil?: Date;
  state: VersionState;
  backdated: boolean;
  createdBy: string;
  createdAt: Date;
  cancelledBy: string;
  cancelledAt?: Date;
}

/** The version columns every version table has. */
export interface VersionRow {
  id: string;
  effective_from: Date;
  backdated: boolean;
  created_by: string;
  created_at: Date;
  cancelled_by: string | null;
  cancelled_at: Date | null;
}

const VERSION_ID_RE = /^[1-9]\d{0,17}$/;

/** A version id (opaque to callers; digits here), or INVALID_ARGUMENT naming `field`. */
export function requireVersionId(id: string, field = "version_id"): string {
  if (id === "") throw invalidField(field, "is required");
  if (!VERSION_ID_RE.test(id)) throw invalidField(field, "is not a version id");
  return id;
}

/**
 * The instant a new version starts: `requested`, or `now` when unset. An
 * instant before `now` needs `backdate` (reported in `v` on `field`).
 */
export function effectiveFromOf(v: Violations, requested: Date | undefined, backdate: boolean, now: Date, field = "effective_from"): { effectiveFrom: Date; backdated: boolean } {
  if (!requested) return { effectiveFrom: now, backdated: false };
  if (requested.getTime() < now.getTime()) {
    if (!backdate) v.add(field, "is in the past: set backdate to add a version in force from a past instant (admin only, kept in history)");
    return { effectiveFrom: requested, backdated: true };
  }
  return { effectiveFrom: requested, backdated: false };
}

/** The live version in force at `at` among `live` (sorted by effective_from, ascending), if any. */
export function inForceAt<T extends { effective_from: Date }>(live: readonly T[], at: Date): T | undefined {
  const t = at.getTime();
  let lo = 0;
  let hi = live.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (live[mid]!.effective_from.getTime() <= t) lo = mid + 1;
    else hi = mid;
  }
  return lo === 0 ? undefined : live[lo - 1];
}

/** The times and state of version `r`, now; `next` is the next live version's start. */
export function versionTimes(r: VersionRow, next: Date | undefined, now: Date): VersionTimes {
  const state: VersionState = r.cancelled_at
    ? "cancelled"
    : r.effective_from.getTime() > now.getTime()
      ? "scheduled"
      : next && next.getTime() <= now.getTime()
        ? "superseded"
        : "in_force";
  const out: VersionTimes = {
    id: String(r.id),
    effectiveFrom: r.effective_from,
    state,
    backdated: r.backdated,
    createdBy: r.created_by,
    createdAt: r.created_at,
    cancelledBy: r.cancelled_by ?? "",
  };
  if (!r.cancelled_at && next) out.effectiveUntil = next;
  if (r.cancelled_at) out.cancelledAt = r.cancelled_at;
  return out;
}

/** The version's times as history records them. */
export function versionAuditTimes(r: VersionRow): Record<string, unknown> {
  return {
    version_id: String(r.id),
    effective_from: r.effective_from.toISOString(),
    backdated: r.backdated,
    created_by: r.created_by,
    ...(r.cancelled_at ? { cancelled_by: r.cancelled_by ?? "", cancelled_at: r.cancelled_at.toISOString() } : {}),
  };
}

/** FAILED_PRECONDITION / INVALID_STATE_TRANSITION: the version is (or was) in force. */
export function notCancellable(id: string): BillingError {
  return failedPrecondition(Reason.InvalidStateTransition, `price version ${id} is in force or was: only a version not yet in force can be cancelled`, { status: "in_force" });
}

/**
 * Runs an insert of a live version; another live version of the record
 * starting at the same instant is INVALID_ARGUMENT on `field`.
 */
export async function uniqueInstant<T>(field: string, insert: () => Promise<T>): Promise<T> {
  try {
    return await insert();
  } catch (err) {
    if (sqlState(err) === "23505") throw invalidField(field, "another version already starts at that instant: cancel it, or pick another instant");
    throw err;
  }
}
