/**
 * Operation types (credit_cost_configs) and the billing configuration
 * singleton (billing_configuration). Their pricing is versioned in
 * cost_config_versions (price-versions.ts).
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows } from "../sql.js";
import { assignments } from "./columns.js";

/** One operation type: its name and switch. */
export interface CostConfigRow {
  operation_type: string;
  display_name: string;
  description: string;
  is_active: boolean;
  updated_by: string | null;
  created_at: Date;
  updated_at: Date;
}

/** The columns of an operation type a change may set. */
export type CostConfigChanges = Partial<Pick<CostConfigRow, "display_name" | "description" | "is_active">>;

/** The global billing configuration (the row with id 1). */
export interface BillingConfigRow {
  default_tokens_per_credit: number;
  /** NUMERIC(10,4) as a string. */
  default_credit_price_usd: string;
  enable_token_based_reporting: boolean;
  credit_rounding_mode: string;
  updated_by: string | null;
  updated_at: Date;
}

/** The columns of the billing configuration a change may set. */
export type BillingConfigChanges = Partial<Pick<BillingConfigRow, "default_tokens_per_credit" | "default_credit_price_usd" | "enable_token_based_reporting" | "credit_rounding_mode">>;

const COST_CONFIG = "SELECT operation_type, display_name, description, is_active, updated_by, created_at, updated_at FROM credit_cost_configs";
const BILLING_CONFIG = "SELECT default_tokens_per_credit, default_credit_price_usd, enable_token_based_reporting, credit_rounding_mode, updated_by, updated_at FROM billing_configuration WHERE id = 1";

/** Every operation type. */
export function allCostConfigs(db: Sequelize): Promise<CostConfigRow[]> {
  return rows<CostConfigRow>(db, COST_CONFIG);
}

/** One operation type, locked FOR UPDATE with `lock`. */
export function costConfig(db: Sequelize, operationType: string, t?: Transaction, lock = false): Promise<CostConfigRow | undefined> {
  return row<CostConfigRow>(db, `${COST_CONFIG} WHERE operation_type = $1 ${lock ? "FOR UPDATE" : ""}`, [operationType], t);
}

/** Operation types after `after` by name (active ones only with `activeOnly`), at most `limit`. */
export function costConfigsAfter(db: Sequelize, activeOnly: boolean, after: string | undefined, limit: number): Promise<CostConfigRow[]> {
  return rows<CostConfigRow>(db, `${COST_CONFIG} WHERE ($1::boolean IS FALSE OR is_active) AND ($2::text IS NULL OR operation_type > $2) ORDER BY operation_type LIMIT $3`, [
    activeOnly,
    after ?? null,
    limit,
  ]);
}

/** Adds an operation type; undefined when one of that name exists. */
export function insertCostConfig(
  db: Sequelize,
  t: Transaction,
  c: Pick<CostConfigRow, "operation_type" | "display_name" | "description" | "is_active" | "updated_by">,
): Promise<CostConfigRow | undefined> {
  return row<CostConfigRow>(
    db,
    `INSERT INTO credit_cost_configs (operation_type, display_name, description, is_active, updated_by)
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (operation_type) DO NOTHING
     RETURNING operation_type, display_name, description, is_active, updated_by, created_at, updated_at`,
    [c.operation_type, c.display_name, c.description, c.is_active, c.updated_by],
    t,
  );
}

/** Sets `changes` of an operation type, changed by `actor` now. */
export async function updateCostConfig(db: Sequelize, t: Transaction, operationType: string, changes: CostConfigChanges, actor: string): Promise<CostConfigRow> {
  const bind: unknown[] = [operationType, actor];
  const set = assignments(changes, bind);
  return (await row<CostConfigRow>(
    db,
    `UPDATE credit_cost_configs SET ${set ? set + ", " : ""}updated_by = $2, updated_at = now() WHERE operation_type = $1
     RETURNING operation_type, display_name, description, is_active, updated_by, created_at, updated_at`,
    bind,
    t,
  ))!;
}

/** The billing configuration; undefined when migrations did not add it. */
export function billingConfiguration(db: Sequelize): Promise<BillingConfigRow | undefined> {
  return row<BillingConfigRow>(db, BILLING_CONFIG);
}

/** Sets `changes` of the billing configuration, changed by `actor` now; undefined when migrations did not add it. */
export function updateBillingConfiguration(db: Sequelize, t: Transaction, changes: BillingConfigChanges, actor: string): Promise<BillingConfigRow | undefined> {
  const bind: unknown[] = [actor];
  const set = assignments(changes, bind);
  return row<BillingConfigRow>(
    db,
    `UPDATE billing_configuration SET ${set ? set + ", " : ""}updated_by = $1, updated_at = now() WHERE id = 1
     RETURNING default_tokens_per_credit, default_credit_price_usd, enable_token_based_reporting, credit_rounding_mode, updated_by, updated_at`,
    bind,
    t,
  );
}
