/**
 * Monthly plan limits (README.md, "The credit model"; the plan_limit_usage
 * table): content ideas, words, basic and premium images, image prompts.
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
import type { Sequelize } from "sequelize";
import { consumeWithinLimit, limitOn, limitsOn, limitsStarting, lockAccountLimits, overlappingPeriod, upsertLimit, type PlanLimitRow as Row } from "../../db/credits/plan-limits.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { type CalendarDate, parseCalendarDate, todayUtc } from "../dates.js";
import { BillingError, Reason, Violations, failedPrecondition } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import { requireId, requireIdempotencyKey } from "../validation.js";

const LIMIT_TYPES = ["content_ideas", "content_words", "images_basic", "images_premium", "image_prompts"] as const;
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
        await lockAccountLimits(this.sequelize, t, input.accountId);
        for (const l of input.limits) {
          const overlap = await overlappingPeriod(this.sequelize, t, input.accountId, l.limitType!, start!, end!);
          if (overlap) {
            throw failedPrecondition(Reason.PeriodOverlap, `${l.limitType} already has a period starting ${overlap} that overlaps ${start}..${end}`, {
              limit_type: l.limitType!,
            });
          }
          await upsertLimit(this.sequelize, t, input.accountId, l.limitType!, l.limit, start!, end!);
        }
        const rows = await limitsStarting(this.sequelize, t, input.accountId, start!);
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
          const row = await consumeWithinLimit(this.sequelize, t, input.accountId, input.limitType!, input.amount, today);
          if (row) return view(row);
          const current = await limitOn(this.sequelize, t, input.accountId, input.limitType!, today);
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
    const rows = await limitsOn(this.sequelize, accountId, day);
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
  // min(100, floor(used / limit * 100)), 0 for a zero limit.
  const percent = limit === 0n ? 0 : Number(used * 100n / limit > 100n ? 100n : (used * 100n) / limit);
  return { limitType: r.limit_type, limit, amountUsed: used, remaining, percentUsed: percent, periodStart: r.period_start, periodEnd: r.period_end };
}
