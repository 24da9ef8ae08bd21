/** The webhook_endpoints table. */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "../sql.js";

export type EndpointState = "healthy" | "failing";

export interface EndpointRow {
  id: string;
  url: string;
  description: string;
  event_types: string[];
  enabled: boolean;
  state: EndpointState;
  created_by: string;
  created_at: Date;
  updated_at: Date;
  /** created_at as the page token carries it. */
  created_key: string;
}

/** The columns an update may change (only those given change). */
export interface EndpointChanges {
  url?: string;
  description?: string;
  event_types?: string[];
  enabled?: boolean;
}

const COLUMNS = `id::text AS id, url, description, event_types, enabled, state, created_by, created_at, updated_at,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key`;

export async function insertEndpoint(
  db: Sequelize,
  t: Transaction,
  e: { url: string; description: string; eventTypes: string[]; enabled: boolean; secretEncrypted: string; createdBy: string },
): Promise<EndpointRow> {
  const inserted = await row<EndpointRow>(
    db,
    `INSERT INTO webhook_endpoints (url, description, event_types, enabled, secret_encrypted, created_by)
     VALUES ($1, $2, $3::text[], $4, $5, $6) RETURNING ${COLUMNS}`,
    [e.url, e.description, e.eventTypes, e.enabled, e.secretEncrypted, e.createdBy],
    t,
  );
  return inserted!;
}

export function endpointById(db: Sequelize, id: string): Promise<EndpointRow | undefined> {
  return row(db, `SELECT ${COLUMNS} FROM webhook_endpoints WHERE id = $1`, [id]);
}

/** One page of endpoints, oldest first, after (created_key, id). */
export function endpointsAfter(db: Sequelize, after: [string, string] | undefined, limit: number): Promise<EndpointRow[]> {
  const bind: unknown[] = [];
  const keyset = after ? `WHERE (created_at, id) > ($${bind.push(after[0])}::timestamptz, $${bind.push(after[1])}::uuid)` : "";
  return rows(db, `SELECT ${COLUMNS} FROM webhook_endpoints ${keyset} ORDER BY created_at, id LIMIT $${bind.push(limit)}`, bind);
}

/** Changes the given columns; enabling also makes the endpoint HEALTHY again. Undefined when it does not exist. */
export function updateEndpoint(db: Sequelize, t: Transaction, id: string, c: EndpointChanges): Promise<EndpointRow | undefined> {
  const bind: unknown[] = [id];
  const assignments = ["updated_at = now()"];
  if (c.url !== undefined) assignments.push(`url = $${bind.push(c.url)}`);
  if (c.description !== undefined) assignments.push(`description = $${bind.push(c.description)}`);
  if (c.event_types !== undefined) assignments.push(`event_types = $${bind.push(c.event_types)}::text[]`);
  if (c.enabled !== undefined) assignments.push(`enabled = $${bind.push(c.enabled)}`);
  if (c.enabled) assignments.push(`state = 'healthy'`);
  return row(db, `UPDATE webhook_endpoints SET ${assignments.join(", ")} WHERE id = $1 RETURNING ${COLUMNS}`, bind, t);
}

/** Deletes an endpoint (its deliveries and attempts cascade); whether it existed. */
export async function deleteEndpoint(db: Sequelize, t: Transaction, id: string): Promise<boolean> {
  return (await rows(db, `DELETE FROM webhook_endpoints WHERE id = $1 RETURNING id`, [id], t)).length > 0;
}

/** Whether an endpoint is enabled, read under a share lock (it cannot change before the caller commits); undefined when it does not exist. */
export async function endpointEnabled(db: Sequelize, t: Transaction, id: string): Promise<boolean | undefined> {
  return (await row<{ enabled: boolean }>(db, `SELECT enabled FROM webhook_endpoints WHERE id = $1 FOR SHARE`, [id], t))?.enabled;
}

/** The endpoint delivered to again: HEALTHY. */
export async function markEndpointHealthy(db: Sequelize, t: Transaction, id: string): Promise<void> {
  await run(db, `UPDATE webhook_endpoints SET state = 'healthy', updated_at = now() WHERE id = $1 AND state = 'failing'`, [id], t);
}

/** A delivery failed for good: the endpoint is FAILING. */
export async function markEndpointFailing(db: Sequelize, t: Transaction, id: string): Promise<void> {
  await run(db, `UPDATE webhook_endpoints SET state = 'failing', updated_at = now() WHERE id = $1 AND state <> 'failing'`, [id], t);
}
