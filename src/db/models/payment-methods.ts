/**
 * Payment methods offered per country (with encrypted provider secrets) and
 * the payment methods each account has saved.
 */
import { DataTypes, Model, type CreationOptional, type InferAttributes, type InferCreationAttributes, type Sequelize } from "sequelize";

/** How a method is offered in one country (seed: PaymentMethodConfig). `*_enc` are AES-256-GCM ciphertexts. */
export class PaymentMethodConfig extends Model<InferAttributes<PaymentMethodConfig>, InferCreationAttributes<PaymentMethodConfig>> {
  declare id: CreationOptional<string>;
  declare country_code: string;
  declare payment_method: string;
  declare is_enabled: boolean;
  declare display_name: string;
  declare instructions: string;
  declare bank_name: string;
  declare account_number: string;
  declare routing_number: string;
  declare swift_code: string;
  declare wallet_type: string;
  declare wallet_id: string;
  declare webhook_url: string;
  declare webhook_secret_enc: string | null;
  declare api_key_enc: string | null;
  declare api_secret_enc: string | null;
  declare sort_order: number;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

/** A payment method saved by an account (seed: AccountPaymentMethod). */
export class AccountPaymentMethod extends Model<InferAttributes<AccountPaymentMethod>, InferCreationAttributes<AccountPaymentMethod>> {
  declare account_id: string;
  declare id: CreationOptional<string>;
  declare type: string;
  declare display_name: string;
  declare is_default: boolean;
  declare is_enabled: boolean;
  declare is_verified: boolean;
  declare country_code: string;
  declare instructions: string;
  declare metadata: Record<string, unknown>;
  /** Stripe: the customer and payment method charged off-session (auto top-up); "" when unknown. */
  declare provider_customer_id: CreationOptional<string>;
  declare provider_payment_method_id: CreationOptional<string>;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

export function initPaymentMethodModels(sequelize: Sequelize) {
  const now = () => ({ type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW });
  const text = (type: DataTypes.DataType = DataTypes.STRING(255)) => ({ type, allowNull: false, defaultValue: "" });
  const secret = () => ({ type: DataTypes.TEXT, allowNull: true });
  const flag = (def: boolean) => ({ type: DataTypes.BOOLEAN, allowNull: false, defaultValue: def });
  const PaymentMethodConfigBound = class extends PaymentMethodConfig {};
  PaymentMethodConfigBound.init(
    {
      id: { type: DataTypes.UUID, primaryKey: true, defaultValue: DataTypes.UUIDV4 },
      country_code: { type: DataTypes.CHAR(2), allowNull: false },
      payment_method: { type: DataTypes.STRING(50), allowNull: false },
      is_enabled: flag(true),
      display_name: text(),
      instructions: text(DataTypes.TEXT),
      bank_name: text(),
      account_number: text(),
      routing_number: text(),
      swift_code: text(),
      wallet_type: text(),
      wallet_id: text(),
      webhook_url: text(DataTypes.TEXT),
      webhook_secret_enc: secret(),
      api_key_enc: secret(),
      api_secret_enc: secret(),
      sort_order: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 0 },
      created_at: now(),
      updated_at: now(),
    },
    { sequelize, tableName: "payment_method_configs" },
  );
  const AccountPaymentMethodBound = class extends AccountPaymentMethod {};
  AccountPaymentMethodBound.init(
    {
      account_id: { type: DataTypes.STRING(255), primaryKey: true },
      id: { type: DataTypes.UUID, primaryKey: true, defaultValue: DataTypes.UUIDV4 },
      type: { type: DataTypes.STRING(50), allowNull: false },
      display_name: { type: DataTypes.STRING(255), allowNull: false },
      is_default: flag(false),
      is_enabled: flag(true),
      is_verified: flag(false),
      country_code: text(DataTypes.STRING(2)),
      instructions: text(DataTypes.TEXT),
      metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      provider_customer_id: text(),
      provider_payment_method_id: text(),
      created_at: now(),
      updated_at: now(),
    },
    { sequelize, tableName: "account_payment_methods" },
  );
  return { PaymentMethodConfig: PaymentMethodConfigBound, AccountPaymentMethod: AccountPaymentMethodBound };
}
