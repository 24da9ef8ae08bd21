/**
 * Invoices, their number sequences, payments with their state history, and
 * received provider webhook events.
 */
import { DataTypes, Model, type CreationOptional, type InferAttributes, type InferCreationAttributes, type Sequelize } from "sequelize";

/** An invoice (seed: Invoice); line_items is a JSON array of {description, quantity, unit_price, amount}. */
export class Invoice extends Model<InferAttributes<Invoice>, InferCreationAttributes<Invoice>> {
  declare account_id: string;
  declare id: CreationOptional<string>;
  declare invoice_number: string | null;
  declare subscription_id: string | null;
  declare subtotal: CreationOptional<string>;
  declare tax: CreationOptional<string>;
  declare total: CreationOptional<string>;
  declare amount_paid: CreationOptional<string>;
  declare currency: string;
  declare status: CreationOptional<string>;
  declare invoice_date: CreationOptional<string>;
  declare due_date: string | null;
  declare paid_at: Date | null;
  declare line_items: CreationOptional<{ description: string; quantity: number; unit_price: string; amount: string }[]>;
  declare stripe_invoice_id: string | null;
  declare payment_method: string | null;
  declare notes: CreationOptional<string>;
  declare metadata: CreationOptional<Record<string, unknown>>;
  declare billing_snapshot: Record<string, unknown> | null;
  declare credit_package_id: string | null;
  declare credit_package_slug: string | null;
  declare credit_package_credits: string | null;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

/** The last invoice number issued in a month (YYYYMM); gapless. */
export class InvoiceNumberSequence extends Model<InferAttributes<InvoiceNumberSequence>, InferCreationAttributes<InvoiceNumberSequence>> {
  declare period: string;
  declare last_value: number;
}

/** A payment of an invoice (seed: Payment). */
export class Payment extends Model<InferAttributes<Payment>, InferCreationAttributes<Payment>> {
  declare account_id: string;
  declare id: CreationOptional<string>;
  declare invoice_id: string;
  declare amount: string;
  declare currency: string;
  declare status: CreationOptional<string>;
  declare payment_method: string;
  declare provider: string | null;
  declare provider_payment_id: string | null;
  declare provider_secondary_id: string | null;
  declare status_before_dispute: CreationOptional<string | null>;
  declare manual_reference: CreationOptional<string>;
  declare manual_notes: CreationOptional<string>;
  declare admin_notes: CreationOptional<string>;
  declare approved_by: string | null;
  declare approved_at: Date | null;
  declare processed_at: Date | null;
  declare failed_at: Date | null;
  declare refunded_at: Date | null;
  declare failure_reason: CreationOptional<string>;
  declare metadata: CreationOptional<Record<string, unknown>>;
  declare credits_granted: CreationOptional<string>;
  declare credits_revoked: CreationOptional<string>;
  declare credits_shortfall: CreationOptional<string>;
  declare amount_refunded: CreationOptional<string>;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

/** One state change of a payment, with who and a snapshot (seed: HistoricalRecords). */
export class PaymentHistory extends Model<InferAttributes<PaymentHistory>, InferCreationAttributes<PaymentHistory>> {
  declare account_id: string;
  declare id: CreationOptional<string>;
  declare payment_id: string;
  declare from_status: string | null;
  declare to_status: string;
  declare actor: string;
  declare note: string;
  declare snapshot: Record<string, unknown>;
  declare created_at: CreationOptional<Date>;
}

/** A provider callback as received, with what it did (verified events claim their id: replays are no-ops). */
export class WebhookEvent extends Model<InferAttributes<WebhookEvent>, InferCreationAttributes<WebhookEvent>> {
  declare id: CreationOptional<string>;
  declare provider: string;
  declare event_id: string;
  declare event_type: string;
  declare signature_valid: boolean;
  declare outcome: string;
  declare detail: string;
  declare payment_id: string | null;
  declare payload: unknown;
  declare received_at: CreationOptional<Date>;
}

export function initInvoicingModels(sequelize: Sequelize) {
  const accountId = () => ({ type: DataTypes.STRING(255), primaryKey: true, allowNull: false });
  const uuidKey = () => ({ type: DataTypes.UUID, primaryKey: true, defaultValue: DataTypes.UUIDV4 });
  const now = () => ({ type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW });
  const optional = (type: DataTypes.DataType) => ({ type, allowNull: true });
  const text = (type: DataTypes.DataType = DataTypes.TEXT) => ({ type, allowNull: false, defaultValue: "" });
  const money = (def = "0") => ({ type: DataTypes.DECIMAL(12, 4), allowNull: false, defaultValue: def });
  const InvoiceBound = class extends Invoice {};
  InvoiceBound.init(
    {
      account_id: accountId(),
      id: uuidKey(),
      invoice_number: optional(DataTypes.STRING(50)),
      subscription_id: optional(DataTypes.STRING(255)),
      subtotal: money(),
      tax: money(),
      total: money(),
      amount_paid: money(),
      currency: { type: DataTypes.CHAR(3), allowNull: false, defaultValue: "USD" },
      status: { type: DataTypes.STRING(20), allowNull: false, defaultValue: "draft" },
      invoice_date: { type: DataTypes.DATEONLY, allowNull: false, defaultValue: DataTypes.NOW },
      due_date: optional(DataTypes.DATEONLY),
      paid_at: optional(DataTypes.DATE),
      line_items: { type: DataTypes.JSONB, allowNull: false, defaultValue: [] },
      stripe_invoice_id: optional(DataTypes.STRING(255)),
      payment_method: optional(DataTypes.STRING(50)),
      notes: text(),
      metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      billing_snapshot: optional(DataTypes.JSONB),
      credit_package_id: optional(DataTypes.UUID),
      credit_package_slug: optional(DataTypes.STRING(255)),
      credit_package_credits: optional(DataTypes.BIGINT),
      created_at: now(),
      updated_at: now(),
    },
    { sequelize, tableName: "invoices" },
  );
  const InvoiceNumberSequenceBound = class extends InvoiceNumberSequence {};
  InvoiceNumberSequenceBound.init(
    { period: { type: DataTypes.CHAR(6), primaryKey: true }, last_value: { type: DataTypes.INTEGER, allowNull: false } },
    { sequelize, tableName: "invoice_number_sequences", timestamps: false },
  );
  const PaymentBound = class extends Payment {};
  PaymentBound.init(
    {
      account_id: accountId(),
      id: uuidKey(),
      invoice_id: { type: DataTypes.UUID, allowNull: false },
      amount: { type: DataTypes.DECIMAL(12, 4), allowNull: false },
      currency: { type: DataTypes.CHAR(3), allowNull: false, defaultValue: "USD" },
      status: { type: DataTypes.STRING(20), allowNull: false, defaultValue: "pending_approval" },
      payment_method: { type: DataTypes.STRING(50), allowNull: false },
      provider: optional(DataTypes.STRING(20)),
      provider_payment_id: optional(DataTypes.STRING(255)),
      provider_secondary_id: optional(DataTypes.STRING(255)),
      status_before_dispute: optional(DataTypes.STRING(20)),
      manual_reference: text(DataTypes.STRING(255)),
      manual_notes: text(),
      admin_notes: text(),
      approved_by: optional(DataTypes.STRING(255)),
      approved_at: optional(DataTypes.DATE),
      processed_at: optional(DataTypes.DATE),
      failed_at: optional(DataTypes.DATE),
      refunded_at: optional(DataTypes.DATE),
      failure_reason: text(),
      metadata: { type: DataTypes.JSONB, allowNull: false, defaultValue: {} },
      credits_granted: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
      credits_revoked: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
      credits_shortfall: { type: DataTypes.BIGINT, allowNull: false, defaultValue: 0 },
      amount_refunded: { type: DataTypes.DECIMAL(12, 4), allowNull: false, defaultValue: 0 },
      created_at: now(),
      updated_at: now(),
    },
    { sequelize, tableName: "payments" },
  );
  const PaymentHistoryBound = class extends PaymentHistory {};
  PaymentHistoryBound.init(
    {
      account_id: accountId(),
      id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
      payment_id: { type: DataTypes.UUID, allowNull: false },
      from_status: optional(DataTypes.STRING(20)),
      to_status: { type: DataTypes.STRING(20), allowNull: false },
      actor: { type: DataTypes.STRING(255), allowNull: false },
      note: text(),
      snapshot: { type: DataTypes.JSONB, allowNull: false },
      created_at: now(),
    },
    { sequelize, tableName: "payment_history", updatedAt: false },
  );
  const WebhookEventBound = class extends WebhookEvent {};
  WebhookEventBound.init(
    {
      id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
      provider: { type: DataTypes.STRING(20), allowNull: false },
      event_id: text(DataTypes.STRING(255)),
      event_type: text(DataTypes.STRING(255)),
      signature_valid: { type: DataTypes.BOOLEAN, allowNull: false },
      outcome: { type: DataTypes.STRING(50), allowNull: false },
      detail: text(),
      payment_id: optional(DataTypes.UUID),
      payload: optional(DataTypes.JSONB),
      received_at: now(),
    },
    { sequelize, tableName: "webhook_events", timestamps: false },
  );
  return { Invoice: InvoiceBound, InvoiceNumberSequence: InvoiceNumberSequenceBound, Payment: PaymentBound, PaymentHistory: PaymentHistoryBound, WebhookEvent: WebhookEventBound };
}
