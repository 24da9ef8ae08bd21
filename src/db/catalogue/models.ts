/**
 * The AI model catalogue (ai_model_configs): capabilities of each model;
 * its prices are versions in model_price_versions (price-versions.ts),
 * joined here as those in force at an instant.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "../sql.js";
import { assignments } from "./columns.js";
import type { ModelPriceColumns } from "./price-versions.js";

/** A model as stored; dates are "YYYY-MM-DD". */
export interface ModelConfigRow {
  model_name: string;
  display_name: string;
  model_type: string;
  provider: string;
  context_window: number | null;
  max_output_tokens: number | null;
  valid_sizes: string[] | null;
  supports_json_mode: boolean;
  supports_vision: boolean;
  supports_function_calling: boolean;
  is_active: boolean;
  is_default: boolean;
  sort_order: number;
  description: string;
  release_date: string | null;
  deprecation_date: string | null;
  updated_by: string | null;
  created_at: Date;
  updated_at: Date;
}

/** The columns of a model a caller sets. */
export type ModelColumns = Omit<ModelConfigRow, "updated_by" | "created_at" | "updated_at">;

/** A model with the price version in force at an instant (its columns null when none was). */
export interface PricedModelRow extends ModelConfigRow, ModelPriceColumns {
  price_version_id: string | null;
  price_effective_from: Date | null;
}

/** The filters and position of a page of models (ordered by type, sort order, name). */
export interface ModelFilters {
  modelType?: string;
  provider?: string;
  activeOnly: boolean;
  after?: [string, number, string];
}

// Dates as text: node-postgres would turn a DATE into a local-midnight Date.
const COLUMNS = `m.model_name, m.display_name, m.model_type, m.provider, m.context_window, m.max_output_tokens, m.valid_sizes,
  m.supports_json_mode, m.supports_vision, m.supports_function_calling, m.is_active, m.is_default, m.sort_order, m.description,
  m.release_date::text AS release_date, m.deprecation_date::text AS deprecation_date, m.updated_by, m.created_at, m.updated_at`;
const JSON_COLUMNS = ["valid_sizes"];

/**
 * Models with the price version in force at $1 (not cancelled, latest
 * effective_from at or before it), among the versions added by $2 (null: all).
 */
const PRICED_MODELS = `SELECT ${COLUMNS}, v.id AS price_version_id, v.effective_from AS price_effective_from,
    v.input_cost_per_1m, v.output_cost_per_1m, v.cost_per_image
  FROM ai_model_configs m LEFT JOIN LATERAL (
    SELECT * FROM model_price_versions v
    WHERE v.model_name = m.model_name AND v.cancelled_at IS NULL AND v.effective_from <= $1 AND ($2::timestamptz IS NULL OR v.created_at <= $2)
    ORDER BY v.effective_from DESC LIMIT 1) v ON true`;

/** A model by name, locked FOR UPDATE with `lock`. */
export function modelConfig(db: Sequelize, modelName: string, t?: Transaction, lock = false): Promise<ModelConfigRow | undefined> {
  return row<ModelConfigRow>(db, `SELECT ${COLUMNS} FROM ai_model_configs m WHERE m.model_name = $1 ${lock ? "FOR UPDATE" : ""}`, [modelName], t);
}

/** The default models of a type (one, or none), locked FOR UPDATE. */
export function defaultModelsForUpdate(db: Sequelize, t: Transaction, modelType: string): Promise<ModelConfigRow[]> {
  return rows<ModelConfigRow>(db, `SELECT ${COLUMNS} FROM ai_model_configs m WHERE m.model_type = $1 AND m.is_default FOR UPDATE`, [modelType], t);
}

/** A model with the prices in force at `at`, counting only versions added by `knownAt` when given. */
export function pricedModel(db: Sequelize, modelName: string, at: Date, knownAt?: Date): Promise<PricedModelRow | undefined> {
  return row<PricedModelRow>(db, `${PRICED_MODELS} WHERE m.model_name = $3`, [at.toISOString(), knownAt?.toISOString() ?? null, modelName]);
}

/** The default model of a type with the prices in force at `at`. */
export function pricedDefaultModel(db: Sequelize, modelType: string, at: Date): Promise<PricedModelRow | undefined> {
  return row<PricedModelRow>(db, `${PRICED_MODELS} WHERE m.model_type = $3 AND m.is_default`, [at.toISOString(), null, modelType]);
}

/** A page of models matching `filters` with the prices in force at `at`, at most `limit`. */
export function pricedModels(db: Sequelize, filters: ModelFilters, at: Date, limit: number): Promise<PricedModelRow[]> {
  const where: string[] = [];
  const bind: unknown[] = [at.toISOString(), null];
  if (filters.modelType) where.push(`m.model_type = $${bind.push(filters.modelType)}`);
  if (filters.provider) where.push(`m.provider = $${bind.push(filters.provider)}`);
  if (filters.activeOnly) where.push("m.is_active");
  if (filters.after) {
    const [type, order, name] = filters.after;
    where.push(`(m.model_type, m.sort_order, m.model_name) > ($${bind.push(type)}, $${bind.push(order)}, $${bind.push(name)})`);
  }
  return rows<PricedModelRow>(
    db,
    `${PRICED_MODELS} ${where.length ? "WHERE " + where.join(" AND ") : ""}
     ORDER BY m.model_type, m.sort_order, m.model_name LIMIT $${bind.push(limit)}`,
    bind,
  );
}

/** Whether a model of that name exists. */
export async function modelExists(db: Sequelize, modelName: string): Promise<boolean> {
  return (await row(db, `SELECT 1 FROM ai_model_configs WHERE model_name = $1`, [modelName])) !== undefined;
}

/** Adds a model, changed by `actor`. */
export async function insertModelConfig(db: Sequelize, t: Transaction, c: ModelColumns, actor: string): Promise<ModelConfigRow> {
  const columns = Object.entries({ ...c, updated_by: actor });
  const values = columns.map(([column], i) => (JSON_COLUMNS.includes(column) ? `$${i + 1}::jsonb` : `$${i + 1}`));
  const bind = columns.map(([column, value]) => (JSON_COLUMNS.includes(column) && value !== null ? JSON.stringify(value) : value));
  return (await row<ModelConfigRow>(db, `INSERT INTO ai_model_configs AS m (${columns.map(([k]) => k).join(", ")}) VALUES (${values.join(", ")}) RETURNING ${COLUMNS}`, bind, t))!;
}

/** Sets `changes` of a model, updated now (and by `actor`, when given). */
export async function updateModelConfig(db: Sequelize, t: Transaction, modelName: string, changes: Partial<ModelColumns>, actor?: string): Promise<ModelConfigRow> {
  const bind: unknown[] = [modelName];
  const set = assignments(actor === undefined ? changes : { ...changes, updated_by: actor }, bind, JSON_COLUMNS);
  return (await row<ModelConfigRow>(db, `UPDATE ai_model_configs AS m SET ${set ? set + ", " : ""}updated_at = now() WHERE m.model_name = $1 RETURNING ${COLUMNS}`, bind, t))!;
}

/** Serialises changes of the default model of a type until `t` ends. */
export function lockModelType(db: Sequelize, t: Transaction, modelType: string): Promise<void> {
  return run(db, `SELECT pg_advisory_xact_lock(hashtext('billing.default_model'), hashtext($1))`, [modelType], t);
}
