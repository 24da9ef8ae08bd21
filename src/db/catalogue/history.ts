/**
 * The change history of admin-managed catalogue records
 * (ai_model_config_history, credit_cost_config_history): one row per
 * change, with the record before and after as jsonb.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "../sql.js";

/** A history table and the column naming its record. */
export interface HistoryTable {
  name: "ai_model_config_history" | "credit_cost_config_history";
  key: "model_name" | "operation_type";
}

export const MODEL_CONFIG_HISTORY: HistoryTable = { name: "ai_model_config_history", key: "model_name" };
export const COST_CONFIG_HISTORY: HistoryTable = { name: "credit_cost_config_history", key: "operation_type" };

/** A history row; before/after are jsonb objects. */
export interface HistoryRow {
  id: string;
  action: string;
  actor: string;
  before: { [key: string]: unknown } | null;
  after: { [key: string]: unknown } | null;
  created_at: Date;
}

/** Appends a change of record `key` inside the changing transaction. */
export function insertHistory(db: Sequelize, t: Transaction, table: HistoryTable, key: string, action: string, actor: string, before: object | null, after: object | null): Promise<void> {
  return run(
    db,
    `INSERT INTO ${table.name} (${table.key}, action, actor, before, after) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)`,
    [key, action, actor, before && JSON.stringify(before), after && JSON.stringify(after)],
    t,
  );
}

/** The changes of record `key` with an id below `beforeId` (all when undefined), newest first, at most `limit`. */
export function historyOf(db: Sequelize, table: HistoryTable, key: string, beforeId: string | undefined, limit: number): Promise<HistoryRow[]> {
  return rows<HistoryRow>(
    db,
    `SELECT id, action, actor, before, after, created_at FROM ${table.name}
     WHERE ${table.key} = $1 ${beforeId !== undefined ? "AND id < $3" : ""} ORDER BY id DESC LIMIT $2`,
    beforeId !== undefined ? [key, limit, beforeId] : [key, limit],
  );
}

/** Whether record `key` has any history (it exists, or once did). */
export async function hasHistory(db: Sequelize, table: HistoryTable, key: string): Promise<boolean> {
  return (await row(db, `SELECT 1 FROM ${table.name} WHERE ${table.key} = $1 LIMIT 1`, [key])) !== undefined;
}
