/**
 * Audit history for admin-managed records (model configs, cost configs):
 * who changed what, when, with the record before and after. Rows are written
 * in the same transaction as the change and paged newest first.
 */
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { decodePageToken, pageOf, pageSize } from "./pagination.js";
import { invalidField } from "./errors.js";

export type JsonObject = { [key: string]: unknown };

/** One change of an audited record. */
export interface AuditRecord {
  id: string;
  action: string;
  actor: string;
  before: JsonObject | null;
  after: JsonObject | null;
  createdAt: Date;
}

/** The history table of one kind of record, keyed by `keyColumn`. */
export class AuditTrail {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly table: "ai_model_config_history" | "credit_cost_config_history",
    private readonly keyColumn: "model_name" | "operation_type",
  ) {}

  /** Appends a change inside the changing transaction. */
  async record(t: Transaction, key: string, action: string, actor: string, before: JsonObject | null, after: JsonObject | null): Promise<void> {
    await this.sequelize.query(
      `INSERT INTO ${this.table} (${this.keyColumn}, action, actor, before, after) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)`,
      { bind: [key, action, actor, before && JSON.stringify(before), after && JSON.stringify(after)], transaction: t },
    );
  }

  /** Pages through the changes of `key`, newest first. */
  async list(key: string, requestedPageSize: number, pageToken: string): Promise<{ entries: AuditRecord[]; nextPageToken: string }> {
    const size = pageSize(requestedPageSize);
    const after = decodePageToken(pageToken, this.table, key);
    if (after && (typeof after[0] !== "string" || !/^\d+$/.test(after[0]))) throw invalidField("page_token", "is not a valid page token for this request");
    const rows = await this.sequelize.query<{ id: string; action: string; actor: string; before: JsonObject | null; after: JsonObject | null; created_at: Date }>(
      `SELECT id, action, actor, before, after, created_at FROM ${this.table}
       WHERE ${this.keyColumn} = $1 ${after ? "AND id < $3" : ""} ORDER BY id DESC LIMIT $2`,
      { bind: after ? [key, size + 1, after[0]] : [key, size + 1], type: QueryTypes.SELECT },
    );
    const page = pageOf(rows, size, (r) => [r.id], this.table, key);
    return {
      entries: page.items.map((r) => ({ id: r.id, action: r.action, actor: r.actor, before: r.before, after: r.after, createdAt: r.created_at })),
      nextPageToken: page.nextPageToken,
    };
  }
}
