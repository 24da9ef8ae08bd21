/**
 * The call of billing_debit (src/db/functions/billing_debit.sql): one
 * statement per batch of debits, or per set of accounts to bring up to
 * date. What the requests and rows mean is src/domain/credits/debit.ts.
 */
import type { Sequelize, Transaction } from "sequelize";
import { rows, rowsOnce } from "../sql.js";

/** One row billing_debit returns: a request's outcome (ord ≥ 1) or a lot that expired (ord 0). */
export type DebitRow = { ord: number; outcome: string; detail: Record<string, unknown> | null };

const DEBIT_SQL = `SELECT ord, outcome, detail FROM billing_debit($1, $2::jsonb)`;
const EXPIRE_SQL = `SELECT ord, outcome, detail FROM billing_debit('', '[]'::jsonb, $1::text[])`;

/** Applies the debits of `requests` (billing_debit's JSON array) for `method`, in `t` or as its own transaction. */
export function callDebit(db: Sequelize, method: string, requests: string, t?: Transaction): Promise<DebitRow[]> {
  // A batch (no transaction of the caller's) is the hottest statement there is.
  return t ? rows<DebitRow>(db, DEBIT_SQL, [method, requests], t) : rowsOnce<DebitRow>(db, DEBIT_SQL, [method, requests]);
}

/** Expires the due lots of `accountIds`, in `t` or as its own transaction. */
export function callExpire(db: Sequelize, accountIds: string[], t?: Transaction): Promise<DebitRow[]> {
  return rows<DebitRow>(db, EXPIRE_SQL, [accountIds], t);
}
