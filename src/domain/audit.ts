/**
 * Audit history for admin-managed records (model configs, cost configs):
 * who changed what, when, with the record before and after. Rows are written
 * in the same transaction as the change and paged newest first.
 */
import type { Sequelize, Transaction } from "sequelize";
import { historyOf, insertHistory, type HistoryTable } from "../db/catalogue/history.js";
import type { JsonObject } from "./json.js";
import { pageOf, pageRequest } from "./pagination.js";


/** One change of an audited record. */
export interface AuditRecord {
  id: string;
  action: string;
  actor: string;
  before: JsonObject | null;
  after: JsonObject | null;
  createdAt: Date;
}

/** The history of one kind of record. */
export class AuditTrail {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly table: HistoryTable,
  ) {}

  /** Appends a change inside the changing transaction. */
  record(t: Transaction, key: string, action: string, actor: string, before: JsonObject | null, after: JsonObject | null): Promise<void> {
    return insertHistory(this.sequelize, t, this.table, key, action, actor, before, after);
  }

  /** Pages through the changes of `key`, newest first. */
  async list(key: string, requestedPageSize: number, pageToken: string): Promise<{ entries: AuditRecord[]; nextPageToken: string }> {
    const { size, after } = pageRequest({ pageSize: requestedPageSize, pageToken }, this.table.name, key, ["digits"]);
    const rows = await historyOf(this.sequelize, this.table, key, after?.[0] as string | undefined, size + 1);
    const page = pageOf(rows, size, (r) => [r.id], this.table.name, key);
    return {
      entries: page.items.map((r) => ({ id: r.id, action: r.action, actor: r.actor, before: r.before, after: r.after, createdAt: r.created_at })),
      nextPageToken: page.nextPageToken,
    };
  }
}
