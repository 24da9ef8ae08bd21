/**
 * Monthly plan limits (seed: PlanLimitUsage): content ideas, words, basic
 * and premium images, image prompts.
 *
 * Rules:
 * - SetPlanLimits sets the allowance of each named type for one period
 *   (first and last day); usage already recorded in that period is kept.
 *   Periods of one type may not overlap.
 * - ConsumePlanLimit consumes from the period containing today (UTC), all or
 *   nothing, in one conditional UPDATE: past the limit is RESOURCE_EXHAUSTED
 *   (LIMIT_EXCEEDED) and nothing is consumed, also under racing consumers.
 * - A new period starts from zero; old periods stay readable by date.
 */
import { QueryTypes, type Sequelize } from "sequelize";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { type CalendarDate, parseCalendarDate, todayUtc } from "../dates.js";
import { BillingError, Reason, Violations, failedPrecondition } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import { requireId, requireIdempotencyKey } from "../validation.js";

export const LIMIT_TYPES = ["content_ideas", "content_words", "images_basic", "images_premium", "image_prompts"] as const;
export type LimitType = (typeof LIMIT_TYPES)[number];

export interface PlanLimitView {
  limitType: LimitType;
  limit: bigint;
  amountUsed: bigint;
  remaining: bigint;
  percentUsed: number;
  periodStart: string;
  periodEnd: string;
}

interface Row {
  limit_type: LimitType;
  limit_amount: string;
  amount_used: string;
  period_start: string;
  period_end: string;
}

const COLUMNS = `limit_type, limit_amount, amount_used, to_char(period_start, 'YYYY-MM-DD') AS period_start, to_char(period_end, 'YYYY-MM-DD') AS period_end`;

/** The plan limit service. */
export class PlanLimits {
  constructor(private readonly sequelize: Sequelize) {}

  /** Sets allowances for a period; returns every limit of that period. */
  async set(
    input: { accountId: string; periodStart: CalendarDate | undefined; periodEnd: CalendarDate | undefined; limits: { limitType: LimitType | undefined; limit: bigint }[] },
    options: TransactionOptions = {},
  ): Promise<PlanLimitView[]> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const start = v.collect(() => parseCalendarDate(input.periodStart, "period_start"));
    const end = v.collect(() => parseCalendarDate(input.periodEnd, "period_end"));
    if (!start && !isBadDate(input.periodStart)) v.add("period_start", "is required");
    if (!end && !isBadDate(input.periodEnd)) v.add("period_end", "is required");
    if (start && end && end < start) v.add("period_end", "must not be before period_start");
    if (input.limits.length === 0) v.add("limits", "must name at least one limit");
    const seen = new Set<string>();
    input.limits.forEach((l, i) => {
      if (!l.limitType) v.add(`limits[${i}].limit_type`, "is required");
      else if (seen.has(l.limitType)) v.add(`limits[${i}].limit_type`, "is listed twice");
      else seen.add(l.limitType);
      if (l.limit < 0n) v.add(`limits[${i}].limit`, "must not be negative");
    });
    v.throwIfAny();
    return inTransaction(
      this.sequelize,
      async (t) => {
        await this.sequelize.query(`SELECT pg_advisory_xact_lock(hashtext('billing.plan_limits'), hashtext($1))`, { bind: [input.accountId], transaction: t });
        for (const l of input.limits) {
          const [overlap] = await this.sequelize.query<{ period_start: string }>(
            `SELECT to_char(period_start, 'YYYY-MM-DD') AS period_start FROM plan_limit_usage
             WHERE account_id = $1 AND limit_type = $2 AND period_start <> $3 AND period_start <= $4 AND period_end >= $3 LIMIT 1`,
            { bind: [input.accountId, l.limitType, start, end], transaction: t, type: QueryTypes.SELECT },
          );
          if (overlap) {
            throw failedPrecondition(Reason.PeriodOverlap, `${l.limitType} already has a period starting ${overlap.period_start} that overlaps ${start}..${end}`, {
              limit_type: l.limitType!,
            });
          }
          await this.sequelize.query(
            `INSERT INTO plan_limit_usage (account_id, limit_type, limit_amount, period_start, period_end) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (account_id, limit_type, period_start)
             DO UPDATE SET limit_amount = EXCLUDED.limit_amount, period_end = EXCLUDED.period_end, updated_at = now()`,
            { bind: [input.accountId, l.limitType, l.limit.toString(), start, end], transaction: t },
          );
        }
        const rows = await this.sequelize.query<Row>(`SELECT ${COLUMNS} FROM plan_limit_usage WHERE account_id = $1 AND period_start = $2 ORDER BY limit_type`, {
          bind: [input.accountId, start],
          transaction: t,
          type: QueryTypes.SELECT,
        });
        return rows.map(view);
      },
      options,
    );
  }

  /** Consumes `amount` of a limit in today's period, all or nothing; idempotent by key. */
  async consume(input: { accountId: string; limitType: LimitType | undefined; amount: bigint; idempotencyKey: string }, options: TransactionOptions = {}): Promise<PlanLimitView> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    if (!input.limitType) v.add("limit_type", "is required");
    if (input.amount <= 0n) v.add("amount", "must be greater than zero");
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    const today = todayUtc();
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: input.accountId, key: input.idempotencyKey, method: "ConsumePlanLimit", request: input }, async () => {
          const [row] = await this.sequelize.query<Row & { fits: boolean }>(
            `UPDATE plan_limit_usage SET amount_used = amount_used + $3, updated_at = now()
             WHERE account_id = $1 AND limit_type = $2 AND period_start <= $4 AND period_end >= $4 AND amount_used + $3 <= limit_amount
             RETURNING ${COLUMNS}`,
            { bind: [input.accountId, input.limitType, input.amount.toString(), today], transaction: t, type: QueryTypes.SELECT },
          );
          if (row) return view(row);
          const [current] = await this.sequelize.query<Row>(
            `SELECT ${COLUMNS} FROM plan_limit_usage WHERE account_id = $1 AND limit_type = $2 AND period_start <= $3 AND period_end >= $3`,
            { bind: [input.accountId, input.limitType, today], transaction: t, type: QueryTypes.SELECT },
          );
          if (!current) throw failedPrecondition(Reason.NoPlanLimit, `no ${input.limitType} limit is set for the period containing ${today}`, { limit_type: input.limitType! });
          const status = view(current);
          throw new BillingError("resource_exhausted", Reason.LimitExceeded, `${input.limitType} limit exceeded: ${input.amount} requested, ${status.remaining} remaining of ${status.limit}`, [], {
            limit_type: status.limitType,
            limit: status.limit.toString(),
            amount_used: status.amountUsed.toString(),
            remaining: status.remaining.toString(),
            requested: input.amount.toString(),
          });
        });
        return result;
      },
      options,
    );
  }

  /** Every limit of the period containing `date` (default today, UTC). */
  async usage(accountId: string, date: CalendarDate | undefined): Promise<PlanLimitView[]> {
    requireId(accountId, "account_id");
    const day = parseCalendarDate(date, "date") ?? todayUtc();
    const rows = await this.sequelize.query<Row>(
      `SELECT ${COLUMNS} FROM plan_limit_usage WHERE account_id = $1 AND period_start <= $2 AND period_end >= $2 ORDER BY limit_type`,
      { bind: [accountId, day], type: QueryTypes.SELECT },
    );
    return rows.map(view);
  }
}

/** Whether a date was given but is not a valid one (already reported by parseCalendarDate). */
function isBadDate(d: CalendarDate | undefined): boolean {
  if (!d || (d.year === 0 && d.month === 0 && d.day === 0)) return false;
  try {
    parseCalendarDate(d, "x");
    return false;
  } catch {
    return true;
  }
}

function view(r: Row): PlanLimitView {
  const limit = BigInt(r.limit_amount);
  const used = BigInt(r.amount_used);
  const remaining = limit > used ? limit - used : 0n;
  // The seed's percentage_used: min(100, int(used / limit * 100)), 0 for a zero limit.
  const percent = limit === 0n ? 0 : Number(used * 100n / limit > 100n ? 100n : (used * 100n) / limit);
  return { limitType: r.limit_type, limit, amountUsed: used, remaining, percentUsed: percent, periodStart: r.period_start, periodEnd: r.period_end };
}
