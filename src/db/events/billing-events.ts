/**
 * The billing_events table (the outbox the triggers of
 * src/db/functions/billing_events.sql write), read in commit order.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "../sql.js";

export interface EventRow {
  account_id: string;
  id: string;
  tx: string;
  seq: string;
  type: string;
  data: Record<string, unknown>;
  created_at: Date;
}

/** What a read of events selects. */
export interface EventQuery {
  /** "" for every account. */
  accountId: string;
  /** Empty for every type. */
  types: string[];
  /** After this (tx, seq) position. */
  after?: [string, string];
  startTime?: Date;
  endTime?: Date;
  limit: number;
}

const COLUMNS = `account_id, id, tx::text AS tx, seq::text AS seq, type, data, created_at`;

/**
 * Events readable now (their transaction older than every transaction
 * still running), in commit order (tx, seq).
 */
export function committedEvents(db: Sequelize, q: EventQuery): Promise<EventRow[]> {
  const bind: unknown[] = [];
  const where = [`tx < pg_snapshot_xmin(pg_current_snapshot())`];
  if (q.accountId) where.push(`account_id = $${bind.push(q.accountId)}`);
  if (q.types.length) where.push(`type = ANY($${bind.push(q.types)}::text[])`);
  if (q.after) where.push(`(tx, seq) > ($${bind.push(q.after[0])}::xid8, $${bind.push(q.after[1])}::bigint)`);
  if (q.startTime) where.push(`created_at >= $${bind.push(q.startTime.toISOString())}`);
  if (q.endTime) where.push(`created_at < $${bind.push(q.endTime.toISOString())}`);
  return rows(db, `SELECT ${COLUMNS} FROM billing_events WHERE ${where.join(" AND ")} ORDER BY tx, seq LIMIT $${bind.push(q.limit)}`, bind);
}

/** One event by its uuid. */
export function eventById(db: Sequelize, id: string): Promise<EventRow | undefined> {
  return row(db, `SELECT ${COLUMNS} FROM billing_events WHERE id = $1`, [id]);
}

/** The last transaction id whose events are all readable now. */
export async function readableTx(db: Sequelize): Promise<string> {
  return (await row<{ tx: string }>(db, `SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text AS tx`))!.tx;
}

/** Writes an event in the caller's transaction (billing_emit); with `dedupeKey`, once per account, type and key. */
export async function emit(db: Sequelize, t: Transaction, accountId: string, type: string, data: Record<string, unknown>, dedupeKey: string | undefined): Promise<void> {
  await run(db, `SELECT billing_emit($1, $2, $3::jsonb, $4)`, [accountId, type, JSON.stringify(data), dedupeKey ?? null], t);
}
