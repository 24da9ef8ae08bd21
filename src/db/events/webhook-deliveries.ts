/**
 * The webhook_deliveries table (one row per event and endpoint) and its
 * webhook_attempts log.
 */
import type { Sequelize, Transaction } from "sequelize";
import { rows, run } from "../sql.js";

export type DeliveryState = "pending" | "delivered" | "failed";

export interface DeliveryRow {
  account_id: string;
  id: string;
  event_id: string;
  event_type: string;
  endpoint_id: string;
  state: DeliveryState;
  attempts: number;
  last_status: number;
  last_error: string;
  last_latency_ms: number;
  next_attempt_at: Date;
  delivered_at: Date | null;
  created_at: Date;
  /** created_at as the page token carries it. */
  created_key: string;
}

/** A leased delivery with what sending it needs of its endpoint. */
export interface ClaimedDelivery {
  account_id: string;
  id: string;
  event_id: string;
  endpoint_id: string;
  /** The attempt this lease is for: the fence later writes check. */
  attempts: number;
  url: string;
  secret_encrypted: string;
  enabled: boolean;
}

/** One attempt's outcome, as recorded. */
export interface AttemptRecord {
  status: number;
  error: string;
  latencyMs: number;
}

const COLUMNS = `account_id, id::text AS id, event_id::text AS event_id, event_type, endpoint_id::text AS endpoint_id, state, attempts,
  last_status, last_error, last_latency_ms, next_attempt_at, delivered_at, created_at,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key`;

/**
 * Leases up to `limit` due deliveries for `leaseMs`, counting their attempt;
 * racing replicas skip each other's rows.
 */
export function claimDue(db: Sequelize, limit: number, leaseMs: number): Promise<ClaimedDelivery[]> {
  return rows(
    db,
    `WITH due AS (
       SELECT account_id, id FROM webhook_deliveries
       WHERE state = 'pending' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
       ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
     ), claimed AS (
       UPDATE webhook_deliveries d SET lease_until = clock_timestamp() + $1 * interval '1 millisecond', attempts = d.attempts + 1, updated_at = now()
       FROM due WHERE d.account_id = due.account_id AND d.id = due.id
       RETURNING d.account_id, d.id, d.event_id, d.endpoint_id, d.attempts
     )
     SELECT c.account_id, c.id, c.event_id::text AS event_id, c.endpoint_id::text AS endpoint_id, c.attempts, e.url, e.secret_encrypted, e.enabled
     FROM claimed c JOIN webhook_endpoints e ON e.id = c.endpoint_id`,
    [leaseMs, limit],
  );
}

/**
 * Extends the lease of a claimed delivery to `leaseMs` from now, if it is
 * still this claim's (pending, no later claim); whether it is.
 */
export async function renewLease(db: Sequelize, c: ClaimedDelivery, leaseMs: number): Promise<boolean> {
  const renewed = await rows(
    db,
    `UPDATE webhook_deliveries SET lease_until = clock_timestamp() + $4 * interval '1 millisecond', updated_at = now()
     WHERE account_id = $1 AND id = $2 AND state = 'pending' AND attempts = $3 AND lease_until IS NOT NULL
     RETURNING id`,
    [c.account_id, c.id, c.attempts, leaseMs],
  );
  return renewed.length > 0;
}

/** A delivery to a disabled endpoint: FAILED, the claim not counted as an attempt. */
export async function skipDisabled(db: Sequelize, c: ClaimedDelivery): Promise<void> {
  await run(
    db,
    `UPDATE webhook_deliveries SET state = 'failed', attempts = attempts - 1, last_error = 'endpoint disabled', lease_until = NULL, updated_at = now()
     WHERE account_id = $1 AND id = $2 AND state = 'pending' AND attempts = $3`,
    [c.account_id, c.id, c.attempts],
  );
}

/** Logs one attempt (if the delivery still exists). */
export async function insertAttempt(db: Sequelize, t: Transaction, c: ClaimedDelivery, r: AttemptRecord): Promise<void> {
  await run(
    db,
    `INSERT INTO webhook_attempts (account_id, delivery_id, attempt, status, error, latency_ms)
     SELECT $1::varchar, $2::uuid, $3::integer, $4::integer, $5::varchar, $6::integer
     WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE account_id = $1::varchar AND id = $2::uuid)`,
    [c.account_id, c.id, c.attempts, r.status, r.error, r.latencyMs],
    t,
  );
}

/** DELIVERED, whatever claim holds it now (a success did get through). */
export async function markDelivered(db: Sequelize, t: Transaction, c: ClaimedDelivery, r: AttemptRecord): Promise<void> {
  await run(
    db,
    `UPDATE webhook_deliveries SET state = 'delivered', delivered_at = now(), last_status = $3, last_error = '', last_latency_ms = $4, lease_until = NULL, updated_at = now()
     WHERE account_id = $1 AND id = $2 AND state <> 'delivered'`,
    [c.account_id, c.id, r.status, r.latencyMs],
    t,
  );
}

/**
 * A failed attempt: FAILED when `final`, else PENDING again in `delayMs`;
 * only if no later claim has taken the delivery over (attempts is the
 * fence). Whether it applied.
 */
export async function markAttemptFailed(db: Sequelize, t: Transaction, c: ClaimedDelivery, r: AttemptRecord, final: boolean, delayMs: number): Promise<boolean> {
  const moved = await rows(
    db,
    `UPDATE webhook_deliveries SET last_status = $3, last_error = $4, last_latency_ms = $5, lease_until = NULL, updated_at = now(),
       state = CASE WHEN $6::boolean THEN 'failed' ELSE 'pending' END,
       next_attempt_at = CASE WHEN $6::boolean THEN next_attempt_at ELSE now() + $7 * interval '1 millisecond' END
     WHERE account_id = $1 AND id = $2 AND state = 'pending' AND attempts = $8
     RETURNING id`,
    [c.account_id, c.id, r.status, r.error, r.latencyMs, final, delayMs, c.attempts],
    t,
  );
  return moved.length > 0;
}

/** Fails the pending deliveries of an endpoint being disabled. */
export async function failPendingOf(db: Sequelize, t: Transaction, endpointId: string): Promise<void> {
  await run(
    db,
    `UPDATE webhook_deliveries SET state = 'failed', last_error = 'endpoint disabled', lease_until = NULL, updated_at = now()
     WHERE endpoint_id = $1 AND state = 'pending'`,
    [endpointId],
    t,
  );
}

/** What a read of the delivery log selects ("" / empty: any). */
export interface DeliveryQuery {
  endpointId: string;
  eventId: string;
  states: string[];
  /** After (created_key, id), newest first. */
  after?: [string, string];
  limit: number;
}

/** One page of the delivery log, newest first. */
export function deliveriesOf(db: Sequelize, q: DeliveryQuery): Promise<DeliveryRow[]> {
  const where: string[] = [];
  const bind: unknown[] = [];
  if (q.endpointId) where.push(`endpoint_id = $${bind.push(q.endpointId)}`);
  if (q.eventId) where.push(`event_id = $${bind.push(q.eventId)}`);
  if (q.states.length) where.push(`state = ANY($${bind.push(q.states)}::text[])`);
  if (q.after) where.push(`(created_at, id) < ($${bind.push(q.after[0])}::timestamptz, $${bind.push(q.after[1])}::uuid)`);
  return rows(
    db,
    `SELECT ${COLUMNS} FROM webhook_deliveries ${where.length ? "WHERE " + where.join(" AND ") : ""}
     ORDER BY created_at DESC, id DESC LIMIT $${bind.push(q.limit)}`,
    bind,
  );
}

/**
 * New PENDING deliveries of an event: to `endpointId` (if enabled), or
 * to every enabled endpoint subscribed to its type.
 */
export function insertRedeliveries(db: Sequelize, t: Transaction, e: { accountId: string; eventId: string; eventType: string }, endpointId: string | undefined): Promise<DeliveryRow[]> {
  const bind: unknown[] = [e.accountId, e.eventId, e.eventType];
  const target = endpointId ? `e.id = $${bind.push(endpointId)}::uuid` : `(cardinality(e.event_types) = 0 OR $3::text = ANY (e.event_types))`;
  return rows(
    db,
    `INSERT INTO webhook_deliveries (account_id, event_id, event_type, endpoint_id)
     SELECT $1::varchar, $2::uuid, $3::varchar, e.id FROM webhook_endpoints e
     WHERE e.enabled AND ${target}
     ORDER BY e.created_at, e.id
     RETURNING ${COLUMNS}`,
    bind,
    t,
  );
}
