/**
 * The idempotency_keys table: claims, stored responses and the purge.
 * The rules (claim first, store with the effect) are src/domain/idempotency.ts.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "./sql.js";

/** A key as stored: the request it was claimed for and its response (JSON null while its effect runs). */
export interface StoredKey {
  request_hash: string;
  response: unknown;
}

/** Claims (account, key) for `method` and `hash`; false when the key was already taken. */
export async function claimKey(db: Sequelize, t: Transaction, accountId: string, key: string, method: string, hash: string): Promise<boolean> {
  const claimed = await rows(
    db,
    `INSERT INTO idempotency_keys (account_id, key, method, request_hash, response)
     VALUES ($1, $2, $3, $4, 'null'::jsonb) ON CONFLICT (account_id, key) DO NOTHING RETURNING 1 AS claimed`,
    [accountId, key, method, hash],
    t,
  );
  return claimed.length > 0;
}

/** The stored request hash and response of (account, key), if the key exists. */
export function storedKey(db: Sequelize, t: Transaction, accountId: string, key: string): Promise<StoredKey | undefined> {
  return row<StoredKey>(db, `SELECT request_hash, response FROM idempotency_keys WHERE account_id = $1 AND key = $2`, [accountId, key], t);
}

/** Stores the encoded response (JSON text) of (account, key). */
export function storeResponse(db: Sequelize, t: Transaction, accountId: string, key: string, response: string): Promise<void> {
  return run(db, `UPDATE idempotency_keys SET response = $3::jsonb WHERE account_id = $1 AND key = $2`, [accountId, key, response], t);
}

/** Deletes keys created more than `hours` ago; returns how many. */
export async function deleteKeysOlderThan(db: Sequelize, hours: number): Promise<number> {
  const r = await row<{ n: number }>(
    db,
    `WITH gone AS (DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1) RETURNING 1) SELECT count(*)::int AS n FROM gone`,
    [hours],
  );
  return r?.n ?? 0;
}
