/** The balance_thresholds table: an account's low-balance alert thresholds. */
import type { Sequelize, Transaction } from "sequelize";
import { rows, run } from "../sql.js";

/** The account's thresholds, ascending. */
export async function thresholdsOf(db: Sequelize, accountId: string): Promise<bigint[]> {
  const found = await rows<{ threshold: string }>(db, `SELECT threshold FROM balance_thresholds WHERE account_id = $1 ORDER BY threshold`, [accountId]);
  return found.map((r) => BigInt(r.threshold));
}

/** Replaces the account's thresholds. */
export async function replaceThresholds(db: Sequelize, t: Transaction, accountId: string, thresholds: bigint[]): Promise<void> {
  await run(db, `DELETE FROM balance_thresholds WHERE account_id = $1`, [accountId], t);
  if (thresholds.length) await run(db, `INSERT INTO balance_thresholds (account_id, threshold) SELECT $1, unnest($2::bigint[])`, [accountId, thresholds.map(String)], t);
}
