/**
 * credit_usage_logs: listings and summaries aggregated by PostgreSQL,
 * optionally repriced at the model prices in force at an instant.
 */
import type { Sequelize } from "sequelize";
import { rows } from "../sql.js";

/** A usage log as stored. */
export interface UsageLogRow {
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
  metadata: Record<string, unknown>;
  created_at: Date;
  cost_config_version_id: string | null;
  model_price_version_id: string | null;
}

/** Which logs a listing wants: an operation ("" for any) and a [start, end) window. */
export interface UsageLogFilter {
  accountId: string;
  operationType: string;
  startTime?: Date;
  endTime?: Date;
}

/** One page of an account's usage logs, newest first (keyset on id): `limit` rows with ids below `afterId`. */
export function listUsageLogs(db: Sequelize, filter: UsageLogFilter, afterId: string | undefined, limit: number): Promise<UsageLogRow[]> {
  const where = ["account_id = $1"];
  const bind: unknown[] = [filter.accountId];
  if (filter.operationType) where.push(`operation_type = $${bind.push(filter.operationType)}`);
  if (filter.startTime) where.push(`created_at >= $${bind.push(filter.startTime.toISOString())}`);
  if (filter.endTime) where.push(`created_at < $${bind.push(filter.endTime.toISOString())}`);
  if (afterId !== undefined) where.push(`id < $${bind.push(afterId)}`);
  return rows<UsageLogRow>(db, `SELECT * FROM credit_usage_logs WHERE ${where.join(" AND ")} ORDER BY id DESC LIMIT $${bind.push(limit)}`, bind);
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

/** One summary row; the last (key NULL) is the grand total. */
export interface SummaryRow {
  key: string | null;
  operations: string;
  credits: string;
  cost_usd: string;
  tokens_input: string;
  tokens_output: string;
  repriced: string | null;
}

/** What a summary groups by. */
export type SummaryKey = "operation" | "model" | "day";

const KEYS: Record<SummaryKey, string> = { operation: "l.operation_type", model: "l.model_used", day: `to_char(l.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')` };

/**
 * Usage summed per group over [start, end) ("" account: every account),
 * ordered by key, with the grand total last (ROLLUP); with `repriceAt`,
 * also the cost at the model prices in force then (a log that cannot be
 * repriced counts at its cost_usd).
 */
export function summarizeUsage(db: Sequelize, q: { accountId: string; startTime?: Date; endTime?: Date; groupBy: SummaryKey; repriceAt?: Date }): Promise<SummaryRow[]> {
  const key = KEYS[q.groupBy];
  const where: string[] = [];
  const bind: unknown[] = [];
  const join = q.repriceAt ? repriced(bind.push(q.repriceAt.toISOString())) : "";
  if (q.accountId) where.push(`l.account_id = $${bind.push(q.accountId)}`);
  if (q.startTime) where.push(`l.created_at >= $${bind.push(q.startTime.toISOString())}`);
  if (q.endTime) where.push(`l.created_at < $${bind.push(q.endTime.toISOString())}`);
  const repricedSum = q.repriceAt ? `COALESCE(sum(COALESCE(r.cost, l.cost_usd)), 0)` : `NULL::numeric`;
  return rows<SummaryRow>(
    db,
    `SELECT ${key} AS key, count(*) AS operations, COALESCE(sum(l.credits_used), 0) AS credits, COALESCE(sum(l.cost_usd), 0) AS cost_usd,
            COALESCE(sum(l.tokens_input), 0) AS tokens_input, COALESCE(sum(l.tokens_output), 0) AS tokens_output, ${repricedSum} AS repriced
     FROM credit_usage_logs l ${join} ${where.length ? "WHERE " + where.join(" AND ") : ""}
     GROUP BY ROLLUP (${key}) ORDER BY ${key} NULLS LAST`,
    bind,
  );
}
