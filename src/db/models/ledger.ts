/**
 * The ledger's tables: per-account balances, immutable credit transactions,
 * usage logs, reservations and idempotency records.
 * BIGINT and NUMERIC attributes are strings; the domain parses them.
 */
import { DataTypes, Model, type CreationOptional, type InferAttributes, type InferCreationAttributes, type Sequelize } from "sequelize";

/** One row per account: its balance (CHECK balance >= 0). */
export class BillingAccount extends Model<InferAttributes<BillingAccount>, InferCreationAttributes<BillingAccount>> {
  declare account_id: string;
  declare balance: CreationOptional<string>;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

/** One immutable ledger entry (seed: CreditTransaction). */
export class CreditTransaction extends Model<InferAttributes<CreditTransaction>, InferCreationAttributes<CreditTransaction>> {
  declare account_id: string;
  declare id: CreationOptional<string>;
  declare type: string;
  declare amount: string;
  declare balance_after: string;
  declare description: string;
  declare metadata: Record<string, unknown>;
  declare payment_id: string | null;
  declare reference_id: CreationOptional<string>;
  declare created_at: CreationOptional<Date>;
}

/** What one AI operation cost (seed: CreditUsageLog). */
export class CreditUsageLog extends Model<InferAttributes<CreditUsageLog>, InferCreationAttributes<CreditUsageLog>> {
  declare account_id: string;
  declare id: CreationOptional<string>;
  declare transaction_id: string | null;
  declare operation_type: string;
  declare credits_used: string;
  declare cost_usd: string | null;
  declare model_used: string;
  declare tokens_input: string | null;
  declare tokens_output: string | null;
  declare related_object_type: string;
  declare related_object_id: string;
  declare metadata: Record<string, unknown>;
  declare created_at: CreationOptional<Date>;
}

/** Credits held before an AI call. */
export class CreditReservation extends Model<InferAttributes<CreditReservation>, InferCreationAttributes<CreditReservation>> {
  declare account_id: string;
  declare id: CreationOptional<string>;
  declare operation_type: string;
  declare credits: string;
  declare status: CreationOptional<string>;
  declare credits_committed: CreationOptional<string>;
  declare expires_at: Date;
  declare created_at: CreationOptional<Date>;
  declare settled_at: Date | null;
}

/** The stored response of a request that moved credits or money. */
export class IdempotencyKey extends Model<InferAttributes<IdempotencyKey>, InferCreationAttributes<IdempotencyKey>> {
  declare account_id: string;
  declare key: string;
  declare method: string;
  declare request_hash: string;
  declare response: unknown;
  declare created_at: CreationOptional<Date>;
}

export function initLedgerModels(sequelize: Sequelize) {
  const accountId = () => ({ type: DataTypes.STRING(255), primaryKey: true, allowNull: false });
  const identity = () => ({ type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true });
  const createdAt = () => ({ type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW });
  const BillingAccountBound = class extends BillingAccount {};
  BillingAccountBound.init(
    {
      account_id: accountId(),
      balance: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
      created_at: createdAt(),
      updated_at: createdAt(),
    },
    { sequelize, tableName: "billing_accounts" },
  );
  const CreditTransactionBound = class extends CreditTransaction {};
  CreditTransactionBound.init(
    {
      account_id: accountId(),
      id: identity(),
      type: { type: DataTypes.STRING(20), allowNull: false },
      amount: { type: DataTypes.BIGINT, allowNull: false },
      balance_after: { type: DataTypes.BIGINT, allowNull: false },
      description: { type: DataTypes.STRING(255), allowNull: false, defaultValue: "" },
      metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      payment_id: { type: DataTypes.UUID, allowNull: true },
      reference_id: { type: DataTypes.STRING(255), allowNull: false, defaultValue: "" },
      created_at: createdAt(),
    },
    { sequelize, tableName: "credit_transactions", updatedAt: false },
  );
  const CreditUsageLogBound = class extends CreditUsageLog {};
  CreditUsageLogBound.init(
    {
      account_id: accountId(),
      id: identity(),
      transaction_id: { type: DataTypes.BIGINT, allowNull: true },
      operation_type: { type: DataTypes.STRING(50), allowNull: false },
      credits_used: { type: DataTypes.BIGINT, allowNull: false },
      cost_usd: { type: DataTypes.DECIMAL(10, 4), allowNull: true },
      model_used: { type: DataTypes.STRING(255), allowNull: false, defaultValue: "" },
      tokens_input: { type: DataTypes.BIGINT, allowNull: true },
      tokens_output: { type: DataTypes.BIGINT, allowNull: true },
      related_object_type: { type: DataTypes.STRING(255), allowNull: false, defaultValue: "" },
      related_object_id: { type: DataTypes.STRING(255), allowNull: false, defaultValue: "" },
      metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      created_at: createdAt(),
    },
    { sequelize, tableName: "credit_usage_logs", updatedAt: false },
  );
  const CreditReservationBound = class extends CreditReservation {};
  CreditReservationBound.init(
    {
      account_id: accountId(),
      id: { type: DataTypes.UUID, primaryKey: true, defaultValue: DataTypes.UUIDV4 },
      operation_type: { type: DataTypes.STRING(50), allowNull: false },
      credits: { type: DataTypes.BIGINT, allowNull: false },
      status: { type: DataTypes.STRING(20), allowNull: false, defaultValue: "active" },
      credits_committed: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
      expires_at: { type: DataTypes.DATE, allowNull: false },
      created_at: createdAt(),
      settled_at: { type: DataTypes.DATE, allowNull: true },
    },
    { sequelize, tableName: "credit_reservations", updatedAt: false },
  );
  const IdempotencyKeyBound = class extends IdempotencyKey {};
  IdempotencyKeyBound.init(
    {
      account_id: accountId(),
      key: { type: DataTypes.STRING(255), primaryKey: true },
      method: { type: DataTypes.STRING(100), allowNull: false },
      request_hash: { type: DataTypes.CHAR(64), allowNull: false },
      response: { type: DataTypes.JSONB, allowNull: false },
      created_at: createdAt(),
    },
    { sequelize, tableName: "idempotency_keys", updatedAt: false },
  );
  return { BillingAccount: BillingAccountBound, CreditTransaction: CreditTransactionBound, CreditUsageLog: CreditUsageLogBound, CreditReservation: CreditReservationBound, IdempotencyKey: IdempotencyKeyBound };
}
