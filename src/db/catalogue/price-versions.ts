/**
 * Price versions (cost_config_versions, model_price_versions): one adapter
 * over both tables, which differ only in the record they version and their
 * price columns. The timeline rules are in src/domain/models/versions.ts.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows } from "../sql.js";

/** The version columns every version table has. */
export interface VersionRow {
  id: string;
  effective_from: Date;
  backdated: boolean;
  created_by: string;
  created_at: Date;
  cancelled_by: string | null;
  cancelled_at: Date | null;
}

/** A version with the start of the next live version of its record (its effective_until), null while none follows. */
export type TimedVersionRow<R extends VersionRow> = R & { next_from: Date | null };

/** An operation type's pricing version. */
export interface CostVersionRow extends VersionRow {
  operation_type: string;
  tokens_per_credit: number;
  min_credits: number;
  /** NUMERIC(10,4) as a string. */
  price_per_credit_usd: string;
  credit_rounding_mode: "up" | "down" | "nearest" | null;
}

/** A model's prices (NUMERIC(10,4) strings, null when the model type takes none). */
export interface ModelPriceColumns {
  input_cost_per_1m: string | null;
  output_cost_per_1m: string | null;
  cost_per_image: string | null;
}

/** A model's price version. */
export interface ModelPriceVersionRow extends VersionRow, ModelPriceColumns {
  model_name: string;
}

/** A version table: its name, the column naming the versioned record, and its price columns. */
export interface VersionTable<R extends VersionRow> {
  name: "cost_config_versions" | "model_price_versions";
  key: keyof R & string;
  prices: readonly (keyof R & string)[];
}

export const COST_CONFIG_VERSIONS: VersionTable<CostVersionRow> = {
  name: "cost_config_versions",
  key: "operation_type",
  prices: ["tokens_per_credit", "min_credits", "price_per_credit_usd", "credit_rounding_mode"],
};

export const MODEL_PRICE_VERSIONS: VersionTable<ModelPriceVersionRow> = {
  name: "model_price_versions",
  key: "model_name",
  prices: ["input_cost_per_1m", "output_cost_per_1m", "cost_per_image"],
};

/** The live (not cancelled) versions of the records `keys` (every record when undefined), by record then effective_from. */
export function liveVersions<R extends VersionRow>(db: Sequelize, table: VersionTable<R>, keys?: readonly string[], t?: Transaction): Promise<R[]> {
  return rows<R>(
    db,
    `SELECT * FROM ${table.name} WHERE cancelled_at IS NULL ${keys ? `AND ${table.key} = ANY ($1::text[])` : ""} ORDER BY ${table.key}, effective_from`,
    keys ? [keys] : [],
    t,
  );
}

/** A version by id, locked FOR UPDATE with `lock`. */
export function versionById<R extends VersionRow>(db: Sequelize, table: VersionTable<R>, id: string, t?: Transaction, lock = false): Promise<R | undefined> {
  return row<R>(db, `SELECT * FROM ${table.name} WHERE id = $1 ${lock ? "FOR UPDATE" : ""}`, [id], t);
}

/** The live version of record `key` with the latest effective_from at or before `at`, if any. */
export function liveVersionAt<R extends VersionRow>(db: Sequelize, table: VersionTable<R>, key: string, at: Date, t?: Transaction): Promise<R | undefined> {
  return row<R>(
    db,
    `SELECT * FROM ${table.name} WHERE ${table.key} = $1 AND cancelled_at IS NULL AND effective_from <= $2 ORDER BY effective_from DESC LIMIT 1`,
    [key, at.toISOString()],
    t,
  );
}

/** Whether a live version of record `key` starts after `at`. */
export async function hasLiveVersionAfter<R extends VersionRow>(db: Sequelize, table: VersionTable<R>, key: string, at: Date, t?: Transaction): Promise<boolean> {
  return (await row(db, `SELECT 1 FROM ${table.name} WHERE ${table.key} = $1 AND cancelled_at IS NULL AND effective_from > $2 LIMIT 1`, [key, at.toISOString()], t)) !== undefined;
}

/** Adds a version of record `key` with `prices` (the table's price columns). */
export async function insertVersion<R extends VersionRow>(
  db: Sequelize,
  t: Transaction,
  table: VersionTable<R>,
  key: string,
  prices: Readonly<Partial<R>>,
  effectiveFrom: Date,
  backdated: boolean,
  actor: string,
): Promise<R> {
  const bind: unknown[] = [key, ...table.prices.map((c) => prices[c] ?? null), effectiveFrom.toISOString(), backdated, actor];
  const columns = [table.key, ...table.prices, "effective_from", "backdated", "created_by"];
  return (await row<R>(db, `INSERT INTO ${table.name} (${columns.join(", ")}) VALUES (${bind.map((_, i) => `$${i + 1}`).join(", ")}) RETURNING *`, bind, t))!;
}

/** Marks a version cancelled by `actor` now. */
export async function cancelVersion<R extends VersionRow>(db: Sequelize, t: Transaction, table: VersionTable<R>, id: string, actor: string): Promise<R> {
  return (await row<R>(db, `UPDATE ${table.name} SET cancelled_by = $2, cancelled_at = now() WHERE id = $1 RETURNING *`, [id, actor], t))!;
}

/** One version by id, with the start of the next live one. */
export function timedVersion<R extends VersionRow>(db: Sequelize, table: VersionTable<R>, id: string, t?: Transaction): Promise<TimedVersionRow<R> | undefined> {
  return row<TimedVersionRow<R>>(db, `${timed(table)} WHERE v.id = $1`, [id], t);
}

/**
 * The versions of record `key` (cancelled ones too), latest effective_from
 * first, after the position (effective_from, id) `after`, at most `limit`,
 * each with the start of the next live one.
 */
export function timedVersionsOf<R extends VersionRow>(db: Sequelize, table: VersionTable<R>, key: string, after: [string, string] | undefined, limit: number): Promise<TimedVersionRow<R>[]> {
  const bind: unknown[] = [key];
  const keyset = after ? `AND (v.effective_from, v.id) < ($${bind.push(after[0])}::timestamptz, $${bind.push(after[1])}::bigint)` : "";
  return rows<TimedVersionRow<R>>(db, `${timed(table)} WHERE v.${table.key} = $1 ${keyset} ORDER BY v.effective_from DESC, v.id DESC LIMIT $${bind.push(limit)}`, bind);
}

function timed<R extends VersionRow>(table: VersionTable<R>): string {
  return `SELECT v.*, (SELECT min(n.effective_from) FROM ${table.name} n
    WHERE n.${table.key} = v.${table.key} AND n.cancelled_at IS NULL AND n.effective_from > v.effective_from) AS next_from
  FROM ${table.name} v`;
}
