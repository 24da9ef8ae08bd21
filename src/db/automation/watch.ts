/**
 * What an account watches: the account row lock and the watch bounds
 * (billing_accounts.watch_min/watch_max) of src/db/functions/billing_events.sql.
 */
import type { Sequelize, Transaction } from "sequelize";
import { run } from "../sql.js";

/**
 * Locks the account row (creating it if needed). Every transaction that
 * changes what an account watches takes it first, so such changes queue
 * behind each other and `rewatch` reads every committed change.
 */
export async function lockAccountWatch(db: Sequelize, t: Transaction, accountId: string): Promise<void> {
  await run(db, `SELECT billing_lock_account($1)`, [accountId], t);
}

/** Recomputes the account's watch bounds from its alerts and its enabled auto top-up. */
export async function rewatch(db: Sequelize, t: Transaction, accountId: string): Promise<void> {
  await run(db, `SELECT billing_rewatch($1)`, [accountId], t);
}
