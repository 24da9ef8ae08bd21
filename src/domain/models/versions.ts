/**
 * Price versions: the timeline rules shared by model prices
 * (model_price_versions, catalogue.ts) and operation pricing
 * (cost_config_versions, credits/pricing.ts), in one PriceTimeline over
 * the table-parameterised adapter src/db/catalogue/price-versions.ts.
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
import type { Sequelize, Transaction } from "sequelize";
import {
  cancelVersion,
  hasLiveVersionAfter,
  insertVersion,
  liveVersionAt,
  liveVersions,
  timedVersion,
  timedVersionsOf,
  versionById,
  type TimedVersionRow,
  type VersionRow,
  type VersionTable,
} from "../../db/catalogue/price-versions.js";
import { inTransaction, sqlState, type TransactionOptions } from "../../db/transaction.js";
import type { AuditTrail } from "../audit.js";
import { BillingError, Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import type { JsonObject } from "../json.js";
import { pageOf, pageRequest, pageSize } from "../pagination.js";


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

const VERSION_ID_RE = /^[1-9]\d{0,17}$/;

/** A version id (opaque to callers; digits here), or INVALID_ARGUMENT naming `field`. */
function requireVersionId(id: string, field = "version_id"): string {
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
function notCancellable(id: string): BillingError {
  return failedPrecondition(Reason.InvalidStateTransition, `price version ${id} is in force or was: only a version not yet in force can be cancelled`, { status: "in_force" });
}

/**
 * Runs an insert of a live version; another live version of the record
 * starting at the same instant is INVALID_ARGUMENT on `field`.
 */
async function uniqueInstant<T>(field: string, insert: () => Promise<T>): Promise<T> {
  try {
    return await insert();
  } catch (err) {
    if (sqlState(err) === "23505") throw invalidField(field, "another version already starts at that instant: cancel it, or pick another instant");
    throw err;
  }
}

/** How one kind of record's timeline is named, kept in history and answered. */
export interface TimelineOptions<R extends VersionRow, V extends VersionTimes> {
  /** What NOT_FOUND names, e.g. "cost config version". */
  what: string;
  history: AuditTrail;
  /** The history actions of a scheduled, a backdated and a cancelled version. */
  actions: { schedule: string; backdate: string; cancel: string };
  /** A version as history keeps it. */
  audit: (r: R) => JsonObject;
  /** A version as callers see it at `now`. */
  view: (r: TimedVersionRow<R>, now: Date) => V;
  /** Runs after a commit that added or cancelled a version (pricing drops its cache). */
  changed?: () => void;
}

/**
 * The price versions of one kind of record over its version table: the
 * one place versions are added, scheduled, cancelled and listed.
 */
export class PriceTimeline<R extends VersionRow, V extends VersionTimes> {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly table: VersionTable<R>,
    private readonly options: TimelineOptions<R, V>,
  ) {}

  /** The live versions of the records `keys` (every record when undefined), by record then effective_from. */
  live(keys?: readonly string[], t?: Transaction): Promise<R[]> {
    return liveVersions(this.sequelize, this.table, keys, t);
  }

  /** The live version of record `key` in force at `at`, if any. */
  inForceAt(t: Transaction | undefined, key: string, at: Date): Promise<R | undefined> {
    return liveVersionAt(this.sequelize, this.table, key, at, t);
  }

  /** Whether a live version of record `key` starts after `now`. */
  hasScheduled(t: Transaction, key: string, now: Date): Promise<boolean> {
    return hasLiveVersionAfter(this.sequelize, this.table, key, now, t);
  }

  /** A version by id, if any. */
  byId(id: string): Promise<R | undefined> {
    return versionById(this.sequelize, this.table, id);
  }

  /**
   * Adds a version of record `key` from `effectiveFrom`; with `field`,
   * another live version starting at that instant is INVALID_ARGUMENT on it.
   */
  add(t: Transaction, key: string, prices: Readonly<Partial<R>>, effectiveFrom: Date, backdated: boolean, actor: string, field?: string): Promise<R> {
    const insert = () => insertVersion(this.sequelize, t, this.table, key, prices, effectiveFrom, backdated, actor);
    return field === undefined ? insert() : uniqueInstant(field, insert);
  }

  /**
   * Adds a version of record `key` in force from `when.effectiveFrom`, in
   * one transaction after `lock` (which locks and checks the record), kept
   * in history with the version it takes over from.
   */
  schedule(
    key: string,
    prices: Readonly<Partial<R>>,
    when: { effectiveFrom: Date; backdated: boolean },
    actor: string,
    now: Date,
    options: TransactionOptions,
    lock: (t: Transaction) => Promise<void>,
  ): Promise<V> {
    const { history, actions, audit } = this.options;
    return inTransaction(
      this.sequelize,
      async (t) => {
        await lock(t);
        const replaced = await this.inForceAt(t, key, when.effectiveFrom);
        const added = await this.add(t, key, prices, when.effectiveFrom, when.backdated, actor, "effective_from");
        await history.record(t, key, when.backdated ? actions.backdate : actions.schedule, actor, replaced ? audit(replaced) : null, audit(added));
        this.changedAfter(t);
        return this.view(t, added.id, now);
      },
      options,
    );
  }

  /** Cancels a version not yet in force (kept in history); a cancelled one is answered as it is. */
  cancel(versionId: string, actor: string, options: TransactionOptions): Promise<V> {
    const id = requireVersionId(versionId);
    const now = new Date();
    const { history, actions, audit, what } = this.options;
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await versionById(this.sequelize, this.table, id, t, true);
        if (!row) throw notFound(what, id);
        if (!row.cancelled_at) {
          if (row.effective_from.getTime() <= now.getTime()) throw notCancellable(id);
          const cancelled = await cancelVersion(this.sequelize, t, this.table, id, actor);
          await history.record(t, String(row[this.table.key]), actions.cancel, actor, audit(row), audit(cancelled));
          this.changedAfter(t);
        }
        return this.view(t, id, now);
      },
      options,
    );
  }

  /**
   * Pages through the versions of record `key`, latest effective_from
   * first (cancelled ones too). A bad page_size joins the caller's
   * violations `v`; `check` runs once the page token is read.
   */
  async list(v: Violations, key: string | undefined, input: { pageSize: number; pageToken: string }, check?: () => Promise<void>): Promise<{ versions: V[]; nextPageToken: string }> {
    v.collect(() => pageSize(input.pageSize));
    v.throwIfAny();
    const { size, after } = pageRequest(input, this.table.name, key, ["timestamp", "digits"]);
    await check?.();
    const rows = await timedVersionsOf(this.sequelize, this.table, key!, after as [string, string] | undefined, size + 1);
    const now = new Date();
    const page = pageOf(
      rows.map((r) => this.options.view(r, now)),
      size,
      (r) => [r.effectiveFrom.toISOString(), r.id],
      this.table.name,
      key,
    );
    return { versions: page.items, nextPageToken: page.nextPageToken };
  }

  private async view(t: Transaction, id: string, now: Date): Promise<V> {
    return this.options.view((await timedVersion(this.sequelize, this.table, id, t))!, now);
  }

  private changedAfter(t: Transaction): void {
    const changed = this.options.changed;
    if (changed) t.afterCommit(() => changed());
  }
}
