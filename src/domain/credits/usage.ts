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
import { QueryTypes, type Sequelize } from "sequelize";
import { PRICE, formatMoney } from "../../money.js";
import { Violations, invalidField } from "../errors.js";
import { decodePageToken, pageOf, pageSize } from "../pagination.js";
import { requireId } from "../validation.js";
import { normalizeOperationType } from "./operations.js";
import type { JsonObject, UsageLogEntry } from "./types.js";

export type GroupBy = "operation" | "model" | "day";

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

interface LogRow {
  id: string;
  account_id: string;
  operation_type: string;
  credits_used: string;
  cost_usd: string | null;
  model_used: string;
  tokens_input: string | null;
  tokens_output: string | null;
  related_object_type: string;
  related_object_id: string;
  metadata: JsonObject;
  created_at: Date;
  cost_config_version_id: string | null;
  model_price_version_id: string | null;
}

/**
 * What log `l` costs at the model prices in force at bind parameter `at`:
 * the version then (nv) and the one the log was priced with (ov); NULL when
 * it cannot say.
 */
const repriced = (at: number) => `LEFT JOIN LATERAL (
    SELECT CASE
      WHEN coalesce(l.tokens_input, 0) = 0 AND coalesce(l.tokens_output, 0) = 0 THEN
        CASE WHEN nv.cost_per_image IS NOT NULL AND ov.cost_per_image IS NOT NULL AND l.cost_usd IS NOT NULL
             THEN round(l.cost_usd / ov.cost_per_image * nv.cost_per_image, 4) END
      WHEN nv.input_cost_per_1m IS NOT NULL AND (coalesce(l.tokens_output, 0) = 0 OR nv.output_cost_per_1m IS NOT NULL)
        THEN round((coalesce(l.tokens_input, 0) * nv.input_cost_per_1m + coalesce(l.tokens_output, 0) * coalesce(nv.output_cost_per_1m, 0)) / 1000000, 4)
    END AS cost
    FROM (SELECT * FROM model_price_versions v WHERE v.model_name = l.model_used AND l.model_used <> '' AND v.cancelled_at IS NULL AND v.effective_from <= $${at}
          ORDER BY v.effective_from DESC LIMIT 1) nv
    LEFT JOIN model_price_versions ov ON ov.id = l.model_price_version_id) r ON true`;

/** The usage reading service. */
export class UsageReports {
  constructor(private readonly sequelize: Sequelize) {}

  /** An account's usage logs, newest first. */
  async listLogs(input: { accountId: string; operationType: string; startTime?: Date; endTime?: Date; pageSize: number; pageToken: string }): Promise<{ logs: UsageLogEntry[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const op = input.operationType ? v.collect(() => normalizeOperationType(input.operationType)) : undefined;
    const size = v.collect(() => pageSize(input.pageSize));
    if (input.startTime && input.endTime && input.startTime > input.endTime) v.add("end_time", "must not be before start_time");
    v.throwIfAny();
    const filters = { a: input.accountId, o: op ?? "", s: input.startTime, e: input.endTime };
    const after = decodePageToken(input.pageToken, "usage_logs", filters);
    const where = ["account_id = $1"];
    const bind: unknown[] = [input.accountId];
    if (op) where.push(`operation_type = $${bind.push(op)}`);
    if (input.startTime) where.push(`created_at >= $${bind.push(input.startTime.toISOString())}`);
    if (input.endTime) where.push(`created_at < $${bind.push(input.endTime.toISOString())}`);
    if (after) {
      if (typeof after[0] !== "string" || !/^\d+$/.test(after[0])) throw invalidField("page_token", "is not a valid page token for this request");
      where.push(`id < $${bind.push(after[0])}`);
    }
    const rows = await this.sequelize.query<LogRow>(
      `SELECT * FROM credit_usage_logs WHERE ${where.join(" AND ")} ORDER BY id DESC LIMIT $${bind.push(size! + 1)}`,
      { bind, type: QueryTypes.SELECT },
    );
    const page = pageOf(rows, size!, (r) => [r.id], "usage_logs", filters);
    return { logs: page.items.map(logView), nextPageToken: page.nextPageToken };
  }

  /** Usage summed per group over [start, end), computed by PostgreSQL. */
  async summary(input: { accountId: string; startTime?: Date; endTime?: Date; groupBy: GroupBy | undefined; repriceAt?: Date }): Promise<{ groups: SummaryGroup[]; total: SummaryGroup }> {
    const v = new Violations();
    if (input.accountId !== "") v.collect(() => requireId(input.accountId, "account_id"));
    if (!input.groupBy) v.add("group_by", "must be OPERATION, MODEL or DAY");
    if (input.startTime && input.endTime && input.startTime > input.endTime) v.add("end_time", "must not be before start_time");
    v.throwIfAny();
    const key = { operation: "l.operation_type", model: "l.model_used", day: `to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')` }[input.groupBy!];
    const where: string[] = [];
    const bind: unknown[] = [];
    const join = input.repriceAt ? repriced(bind.push(input.repriceAt.toISOString())) : "";
    if (input.accountId) where.push(`l.account_id = $${bind.push(input.accountId)}`);
    if (input.startTime) where.push(`l.created_at >= $${bind.push(input.startTime.toISOString())}`);
    if (input.endTime) where.push(`l.created_at < $${bind.push(input.endTime.toISOString())}`);
    const repricedSum = input.repriceAt ? `COALESCE(sum(COALESCE(r.cost, l.cost_usd)), 0)` : `NULL::numeric`;
    const rows = await this.sequelize.query<{ key: string | null; operations: string; credits: string; cost_usd: string; tokens_input: string; tokens_output: string; repriced: string | null }>(
      `SELECT ${key} AS key, count(*) AS operations, COALESCE(sum(l.credits_used), 0) AS credits, COALESCE(sum(l.cost_usd), 0) AS cost_usd,
              COALESCE(sum(l.tokens_input), 0) AS tokens_input, COALESCE(sum(l.tokens_output), 0) AS tokens_output, ${repricedSum} AS repriced
       FROM credit_usage_logs l ${join} ${where.length ? "WHERE " + where.join(" AND ") : ""}
       GROUP BY ROLLUP (${key}) ORDER BY ${key} NULLS LAST`,
      { bind, type: QueryTypes.SELECT },
    );
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
      : { key: "", operations: 0n, credits: 0n, costUsd: "0.0000", tokensInput: 0n, tokensOutput: 0n, ...(input.repriceAt ? { repricedCostUsd: "0.0000" } : {}) };
    return { groups, total };
  }
}

function logView(r: LogRow): UsageLogEntry {
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
