/**
 * Pricing and plan tables: per-operation cost configs (with history), the
 * billing configuration singleton, plan limit usage and credit packages.
 */
import { DataTypes, Model, type CreationOptional, type InferAttributes, type InferCreationAttributes, type Sequelize } from "sequelize";

/**
 * One operation type (seed: CreditCostConfig): its name and switch. Its
 * pricing (tokens_per_credit, min_credits, price_per_credit_usd, rounding)
 * is versioned in cost_config_versions (src/domain/credits/pricing.ts).
 */
export class CreditCostConfig extends Model<InferAttributes<CreditCostConfig>, InferCreationAttributes<CreditCostConfig>> {
  declare operation_type: string;
  declare display_name: string;
  declare description: string;
  declare is_active: boolean;
  declare updated_by: string | null;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

/** One change of a cost config (seed: HistoricalRecords). */
export class CreditCostConfigHistory extends Model<InferAttributes<CreditCostConfigHistory>, InferCreationAttributes<CreditCostConfigHistory>> {
  declare id: CreationOptional<string>;
  declare operation_type: string;
  declare action: string;
  declare actor: string;
  declare before: Record<string, unknown> | null;
  declare after: Record<string, unknown> | null;
  declare created_at: CreationOptional<Date>;
}

/** The singleton (id = 1) global configuration (seed: BillingConfiguration). */
export class BillingConfiguration extends Model<InferAttributes<BillingConfiguration>, InferCreationAttributes<BillingConfiguration>> {
  declare id: CreationOptional<number>;
  declare default_tokens_per_credit: number;
  declare default_credit_price_usd: string;
  declare enable_token_based_reporting: boolean;
  declare credit_rounding_mode: string;
  declare updated_by: string | null;
  declare updated_at: CreationOptional<Date>;
}

/** Usage of one plan limit in one period (seed: PlanLimitUsage), with its allowance. */
export class PlanLimitUsage extends Model<InferAttributes<PlanLimitUsage>, InferCreationAttributes<PlanLimitUsage>> {
  declare account_id: string;
  declare id: CreationOptional<string>;
  declare limit_type: string;
  declare limit_amount: string;
  declare amount_used: CreationOptional<string>;
  declare period_start: string;
  declare period_end: string;
  declare metadata: CreationOptional<Record<string, unknown>>;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

/** A one-time credit bundle (seed: CreditPackage). */
export class CreditPackage extends Model<InferAttributes<CreditPackage>, InferCreationAttributes<CreditPackage>> {
  declare id: CreationOptional<string>;
  declare name: string;
  declare slug: string;
  declare credits: string;
  declare price: string;
  declare discount_percentage: number;
  declare currency: string;
  declare stripe_product_id: string | null;
  declare stripe_price_id: string | null;
  declare paypal_plan_id: string | null;
  declare is_active: boolean;
  declare is_featured: boolean;
  declare description: string;
  declare features: string[];
  declare sort_order: number;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

export function initPricingModels(sequelize: Sequelize) {
  const createdAt = () => ({ type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW });
  const history = {
    id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
    action: { type: DataTypes.STRING(50), allowNull: false },
    actor: { type: DataTypes.STRING(255), allowNull: false },
    before: { type: DataTypes.JSONB, allowNull: true },
    after: { type: DataTypes.JSONB, allowNull: true },
    created_at: createdAt(),
  };
  const CreditCostConfigBound = class extends CreditCostConfig {};
  CreditCostConfigBound.init(
    {
      operation_type: { type: DataTypes.STRING(50), primaryKey: true },
      display_name: { type: DataTypes.STRING(100), allowNull: false },
      description: { type: DataTypes.TEXT, allowNull: false, defaultValue: "" },
      is_active: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: true },
      updated_by: { type: DataTypes.STRING(255), allowNull: true },
      created_at: createdAt(),
      updated_at: createdAt(),
    },
    { sequelize, tableName: "credit_cost_configs" },
  );
  const CreditCostConfigHistoryBound = class extends CreditCostConfigHistory {};
  CreditCostConfigHistoryBound.init(
    { ...history, operation_type: { type: DataTypes.STRING(50), allowNull: false } },
    { sequelize, tableName: "credit_cost_config_history", updatedAt: false },
  );
  const BillingConfigurationBound = class extends BillingConfiguration {};
  BillingConfigurationBound.init(
    {
      id: { type: DataTypes.SMALLINT, primaryKey: true, defaultValue: 1 },
      default_tokens_per_credit: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 100 },
      default_credit_price_usd: { type: DataTypes.DECIMAL(10, 4), allowNull: false, defaultValue: "0.0100" },
      enable_token_based_reporting: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: true },
      credit_rounding_mode: { type: DataTypes.STRING(10), allowNull: false, defaultValue: "up" },
      updated_by: { type: DataTypes.STRING(255), allowNull: true },
      updated_at: createdAt(),
    },
    { sequelize, tableName: "billing_configuration", createdAt: false },
  );
  const PlanLimitUsageBound = class extends PlanLimitUsage {};
  PlanLimitUsageBound.init(
    {
      account_id: { type: DataTypes.STRING(255), primaryKey: true },
      id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
      limit_type: { type: DataTypes.STRING(50), allowNull: false },
      limit_amount: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
      amount_used: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
      period_start: { type: DataTypes.DATEONLY, allowNull: false },
      period_end: { type: DataTypes.DATEONLY, allowNull: false },
      metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      created_at: createdAt(),
      updated_at: createdAt(),
    },
    { sequelize, tableName: "plan_limit_usage" },
  );
  const CreditPackageBound = class extends CreditPackage {};
  CreditPackageBound.init(
    {
      id: { type: DataTypes.UUID, primaryKey: true, defaultValue: DataTypes.UUIDV4 },
      name: { type: DataTypes.STRING(255), allowNull: false },
      slug: { type: DataTypes.STRING(255), allowNull: false, unique: true },
      credits: { type: DataTypes.BIGINT, allowNull: false },
      price: { type: DataTypes.DECIMAL(12, 4), allowNull: false },
      discount_percentage: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 0 },
      currency: { type: DataTypes.CHAR(3), allowNull: false, defaultValue: "USD" },
      stripe_product_id: { type: DataTypes.STRING(255), allowNull: true },
      stripe_price_id: { type: DataTypes.STRING(255), allowNull: true },
      paypal_plan_id: { type: DataTypes.STRING(255), allowNull: true },
      is_active: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: true },
      is_featured: { type: DataTypes.BOOLEAN, allowNull: false, defaultValue: false },
      description: { type: DataTypes.TEXT, allowNull: false, defaultValue: "" },
      features: { type: DataTypes.JSONB, allowNull: false, defaultValue: [] },
      sort_order: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 0 },
      created_at: createdAt(),
      updated_at: createdAt(),
    },
    { sequelize, tableName: "credit_packages" },
  );
  return { CreditCostConfig: CreditCostConfigBound, CreditCostConfigHistory: CreditCostConfigHistoryBound, BillingConfiguration: BillingConfigurationBound, PlanLimitUsage: PlanLimitUsageBound, CreditPackage: CreditPackageBound };
}
