/**
 * plan_limit_usage: an account's allowance and usage per limit type and
 * period (dates as 'YYYY-MM-DD' strings).
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "../sql.js";

/** A limit's period as stored. */
export interface PlanLimitRow {
  limit_type: "content_ideas" | "content_words" | "images_basic" | "images_premium" | "image_prompts";
  limit_amount: string;
  amount_used: string;
  period_start: string;
  period_end: string;
}

const COLUMNS = `limit_type, limit_amount, amount_used, to_char(period_start, 'YYYY-MM-DD') AS period_start, to_char(period_end, 'YYYY-MM-DD') AS period_end`;

/** Serialises changes of an account's limits until `t` ends. */
export function lockAccountLimits(db: Sequelize, t: Transaction, accountId: string): Promise<void> {
  return run(db, `SELECT pg_advisory_xact_lock(hashtext('billing.plan_limits'), hashtext($1))`, [accountId], t);
}

/** The start of another period of the limit that overlaps [start, end], if any. */
export async function overlappingPeriod(db: Sequelize, t: Transaction, accountId: string, limitType: string, start: string, end: string): Promise<string | undefined> {
  const found = await row<{ period_start: string }>(
    db,
    `SELECT to_char(period_start, 'YYYY-MM-DD') AS period_start FROM plan_limit_usage
     WHERE account_id = $1 AND limit_type = $2 AND period_start <> $3 AND period_start <= $4 AND period_end >= $3 LIMIT 1`,
    [accountId, limitType, start, end],
    t,
  );
  return found?.period_start;
}

/** Sets the allowance of the limit's period starting `start`, keeping its usage. */
export function upsertLimit(db: Sequelize, t: Transaction, accountId: string, limitType: string, limit: bigint, start: string, end: string): Promise<void> {
  return run(
    db,
    `INSERT INTO plan_limit_usage (account_id, limit_type, limit_amount, period_start, period_end) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (account_id, limit_type, period_start)
     DO UPDATE SET limit_amount = EXCLUDED.limit_amount, period_end = EXCLUDED.period_end, updated_at = now()`,
    [accountId, limitType, limit.toString(), start, end],
    t,
  );
}

/** Every limit of the account's periods starting `start`, by limit type. */
export function limitsStarting(db: Sequelize, t: Transaction, accountId: string, start: string): Promise<PlanLimitRow[]> {
  return rows<PlanLimitRow>(db, `SELECT ${COLUMNS} FROM plan_limit_usage WHERE account_id = $1 AND period_start = $2 ORDER BY limit_type`, [accountId, start], t);
}

/** Adds `amount` to the usage of the limit's period containing `day` if it stays within the limit; undefined otherwise. */
export function consumeWithinLimit(db: Sequelize, t: Transaction, accountId: string, limitType: string, amount: bigint, day: string): Promise<PlanLimitRow | undefined> {
  return row<PlanLimitRow>(
    db,
    `UPDATE plan_limit_usage SET amount_used = amount_used + $3, updated_at = now()
     WHERE account_id = $1 AND limit_type = $2 AND period_start <= $4 AND period_end >= $4 AND amount_used + $3 <= limit_amount
     RETURNING ${COLUMNS}`,
    [accountId, limitType, amount.toString(), day],
    t,
  );
}

/** The limit's period containing `day`, if any. */
export function limitOn(db: Sequelize, t: Transaction, accountId: string, limitType: string, day: string): Promise<PlanLimitRow | undefined> {
  return row<PlanLimitRow>(db, `SELECT ${COLUMNS} FROM plan_limit_usage WHERE account_id = $1 AND limit_type = $2 AND period_start <= $3 AND period_end >= $3`, [accountId, limitType, day], t);
}

/** Every limit of the account's periods containing `day`, by limit type. */
export function limitsOn(db: Sequelize, accountId: string, day: string): Promise<PlanLimitRow[]> {
  return rows<PlanLimitRow>(db, `SELECT ${COLUMNS} FROM plan_limit_usage WHERE account_id = $1 AND period_start <= $2 AND period_end >= $2 ORDER BY limit_type`, [accountId, day]);
}
