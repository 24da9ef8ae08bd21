/**
 * Reading usage: per-operation usage logs (keyset-paginated) and summaries
 * grouped by operation, model or UTC day, aggregated in SQL.
 *
 * cost_usd is always the cost at the prices of the time (each log keeps what
 * it was priced at, and the price version ids). With reprice_at a summary
 * also answers what the same usage costs at the model prices in force then:
 * token usage from its token counts; image usage from its cost and the
 * per-image price of the version it was priced with (usage logs keep no
 * image count); each log rounded to scale 4 half-up like cost_usd. A log
 * that cannot be repriced (no model, no version in force then, a price the
 * version lacks, or an image log older than price versions) counts at its
 * cost_usd.
 */
import type { Sequelize } from "sequelize";
import { listUsageLogs, summarizeUsage, type SummaryKey, type UsageLogRow } from "../../db/credits/usage.js";
import { PRICE, formatMoney } from "../money.js";
import { Violations } from "../errors.js";
import { pageOf, pageRequest } from "../pagination.js";
import { requireId } from "../validation.js";
import { normalizeOperationType } from "./operations.js";
import type { UsageLogEntry } from "./types.js";

export type GroupBy = SummaryKey;

export interface SummaryGroup {
  key: string;
  operations: bigint;
  credits: bigint;
  costUsd: string;
  tokensInput: bigint;
  tokensOutput: bigint;
  /** With reprice_at only. */
  repricedCostUsd?: string;
}

/** The usage reading service. */
export class UsageReports {
  constructor(private readonly sequelize: Sequelize) {}

  /** An account's usage logs, newest first. */
  async listLogs(input: { accountId: string; operationType: string; startTime?: Date; endTime?: Date; pageSize: number; pageToken: string }): Promise<{ logs: UsageLogEntry[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const op = input.operationType ? v.collect(() => normalizeOperationType(input.operationType)) : undefined;
    const filters = { a: input.accountId, o: op ?? "", s: input.startTime, e: input.endTime };
    const paging = v.collect(() => pageRequest(input, "usage_logs", filters, ["digits"]));
    if (input.startTime && input.endTime && input.startTime > input.endTime) v.add("end_time", "must not be before start_time");
    v.throwIfAny();
    const { size, after } = paging!;
    const rows = await listUsageLogs(this.sequelize, { ...input, operationType: op ?? "" }, after?.[0] as string | undefined, size + 1);
    const page = pageOf(rows, size, (r) => [r.id], "usage_logs", filters);
    return { logs: page.items.map(logView), nextPageToken: page.nextPageToken };
  }

  /** Usage summed per group over [start, end), computed by PostgreSQL. */
  async summary(input: { accountId: string; startTime?: Date; endTime?: Date; groupBy: GroupBy | undefined; repriceAt?: Date }): Promise<{ groups: SummaryGroup[]; total: SummaryGroup }> {
    const v = new Violations();
    if (input.accountId !== "") v.collect(() => requireId(input.accountId, "account_id"));
    if (!input.groupBy) v.add("group_by", "must be OPERATION, MODEL or DAY");
    if (input.startTime && input.endTime && input.startTime > input.endTime) v.add("end_time", "must not be before start_time");
    v.throwIfAny();
    const rows = await summarizeUsage(this.sequelize, { ...input, groupBy: input.groupBy! });
    // ROLLUP's grand-total row has key NULL and sorts last; model_used is never NULL (empty string for "no model").
    const groups = rows.map((r) => ({
      key: r.key ?? "",
      operations: BigInt(r.operations),
      credits: BigInt(r.credits),
      costUsd: formatMoney(r.cost_usd, PRICE),
      tokensInput: BigInt(r.tokens_input),
      tokensOutput: BigInt(r.tokens_output),
      ...(input.repriceAt ? { repricedCostUsd: formatMoney(r.repriced ?? 0, PRICE) } : {}),
    }));
    const total = groups.length
      ? groups.pop()!
      : { key: "", operations: 0n, credits: 0n, costUsd: formatMoney(0, PRICE), tokensInput: 0n, tokensOutput: 0n, ...(input.repriceAt ? { repricedCostUsd: formatMoney(0, PRICE) } : {}) };
    return { groups, total };
  }
}

function logView(r: UsageLogRow): UsageLogEntry {
  return {
    id: r.id,
    accountId: r.account_id,
    operationType: r.operation_type,
    creditsUsed: BigInt(r.credits_used),
    costUsd: r.cost_usd === null ? "" : formatMoney(r.cost_usd, PRICE),
    modelUsed: r.model_used,
    tokensInput: BigInt(r.tokens_input ?? 0),
    tokensOutput: BigInt(r.tokens_output ?? 0),
    relatedObjectType: r.related_object_type,
    relatedObjectId: r.related_object_id,
    metadata: r.metadata,
    createdAt: r.created_at,
    costConfigVersionId: r.cost_config_version_id ?? "",
    modelPriceVersionId: r.model_price_version_id ?? "",
  };
}
