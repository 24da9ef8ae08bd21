/**
 * Payment methods: the methods offered per country (with write-only
 * encrypted provider secrets) and the methods each account saved (SQL in
 * src/db/payments/payment-methods.ts).
 *
 * Rules:
 * - api_key, api_secret and webhook_secret are write-only: stored encrypted,
 *   never returned (views say has_api_key etc.).
 * - At most one default per account (unique partial index; default changes
 *   serialise on a per-account advisory lock). Display names are unique per
 *   account.
 * - provider_customer_id and provider_payment_method_id (what an
 *   off-session charge uses) are set by admin and service keys only; the
 *   handler refuses them to account keys (PERMISSION_DENIED).
 * - Saving a new default, making a method the default, or updating the
 *   default resumes an auto top-up that switched itself off (a declined
 *   card), in the same transaction (src/domain/automation/auto-top-up.ts).
 */
import { UniqueConstraintError, type Sequelize, type Transaction } from "sequelize";
import * as db from "../../db/payments/payment-methods.js";
import type { AccountMethodRow, AccountMethodValues, EncryptedSecrets, MethodConfigRow } from "../../db/payments/payment-methods.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import type { Authorize } from "../access.js";
import { resumeAutoTopUpIn } from "../automation/auto-top-up.js";
import { BillingError, Reason, Violations, invalidField, notFound } from "../errors.js";
import { applyMask } from "../field-mask.js";
import type { PaymentMethodName } from "../invoices/invoices.js";
import type { JsonObject } from "../json.js";
import { pageOf, pageRequest } from "../pagination.js";
import { checkMetadata, checkText, requireId, requireUuid } from "../validation.js";
import type { SecretBox } from "./secrets.js";

export interface MethodConfigView {
  countryCode: string;
  paymentMethod: PaymentMethodName;
  isEnabled: boolean;
  displayName: string;
  instructions: string;
  bankName: string;
  accountNumber: string;
  routingNumber: string;
  swiftCode: string;
  walletType: string;
  walletId: string;
  webhookUrl: string;
  sortOrder: number;
  hasApiKey: boolean;
  hasApiSecret: boolean;
  hasWebhookSecret: boolean;
  createdAt: Date;
  updatedAt: Date;
}

export type MethodConfigInput = Omit<MethodConfigView, "paymentMethod" | "hasApiKey" | "hasApiSecret" | "hasWebhookSecret" | "createdAt" | "updatedAt"> & { paymentMethod: PaymentMethodName | undefined };

export interface SecretsInput {
  apiKey: string;
  apiSecret: string;
  webhookSecret: string;
  clear: string[];
}

export interface AccountMethodView {
  id: string;
  accountId: string;
  type: PaymentMethodName;
  displayName: string;
  isDefault: boolean;
  isEnabled: boolean;
  isVerified: boolean;
  countryCode: string;
  instructions: string;
  metadata: JsonObject;
  /** Stripe: the customer and payment method an off-session charge (auto top-up) uses. */
  providerCustomerId: string;
  providerPaymentMethodId: string;
  createdAt: Date;
  updatedAt: Date;
}

export type AccountMethodInput = Omit<AccountMethodView, "type" | "createdAt" | "updatedAt"> & { type: PaymentMethodName | undefined };

const ACCOUNT_METHOD_FIELDS = ["type", "display_name", "is_enabled", "is_verified", "country_code", "instructions", "metadata", "provider_customer_id", "provider_payment_method_id"] as const;
export type AccountMethodField = (typeof ACCOUNT_METHOD_FIELDS)[number];
const COUNTRY_RE = /^[A-Z]{2}$/;
const SECRET_NAMES = ["api_key", "api_secret", "webhook_secret"] as const;

/** The payment method service. */
export class PaymentMethods {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly secrets: SecretBox,
  ) {}

  /** Enabled methods of a country, in display order. */
  async listForCountry(countryCode: string): Promise<MethodConfigView[]> {
    const country = countryOf(countryCode, "country_code");
    return (await db.enabledConfigsOf(this.sequelize, country)).map(configView);
  }

  /** Admin: creates or replaces a country's config of a method; secrets are encrypted, empty ones kept. */
  async upsertConfig(input: MethodConfigInput, secrets: SecretsInput, options: TransactionOptions = {}): Promise<MethodConfigView> {
    const v = new Violations();
    const f = (n: string) => `payment_method_config.${n}`;
    const country = v.collect(() => countryOf(input.countryCode, f("country_code")));
    if (!input.paymentMethod) v.add(f("payment_method"), "is required");
    for (const [name, value, max] of [
      ["display_name", input.displayName, 255],
      ["instructions", input.instructions, 4000],
      ["bank_name", input.bankName, 255],
      ["account_number", input.accountNumber, 255],
      ["routing_number", input.routingNumber, 255],
      ["swift_code", input.swiftCode, 255],
      ["wallet_type", input.walletType, 255],
      ["wallet_id", input.walletId, 255],
      ["webhook_url", input.webhookUrl, 2000],
    ] as const) {
      v.collect(() => checkText(value, f(name), max));
    }
    if (input.webhookUrl && !/^https?:\/\/\S+$/.test(input.webhookUrl)) v.add(f("webhook_url"), "must be an http(s) URL");
    for (const [name, value] of [["api_key", secrets.apiKey], ["api_secret", secrets.apiSecret], ["webhook_secret", secrets.webhookSecret]] as const) {
      if ([...value].length > 1000) v.add(`secrets.${name}`, "must be at most 1000 characters");
    }
    secrets.clear.forEach((c, i) => {
      if (!(SECRET_NAMES as readonly string[]).includes(c)) v.add(`secrets.clear[${i}]`, `must be one of ${SECRET_NAMES.join(", ")}`);
    });
    v.throwIfAny();
    const encrypted: EncryptedSecrets = {};
    for (const [column, value, name] of [["api_key_enc", secrets.apiKey, "api_key"], ["api_secret_enc", secrets.apiSecret, "api_secret"], ["webhook_secret_enc", secrets.webhookSecret, "webhook_secret"]] as const) {
      if (value !== "") encrypted[column] = this.secrets.encrypt(value);
      else if (secrets.clear.includes(name)) encrypted[column] = null;
    }
    const values = {
      country_code: country!,
      payment_method: input.paymentMethod!,
      is_enabled: input.isEnabled,
      display_name: input.displayName,
      instructions: input.instructions,
      bank_name: input.bankName,
      account_number: input.accountNumber,
      routing_number: input.routingNumber,
      swift_code: input.swiftCode,
      wallet_type: input.walletType,
      wallet_id: input.walletId,
      webhook_url: input.webhookUrl,
      sort_order: input.sortOrder,
    };
    return inTransaction(this.sequelize, async (t) => configView(await db.upsertConfig(this.sequelize, t, values, encrypted)), options);
  }

  /** Admin: deletes a country's config of a method. */
  async deleteConfig(countryCode: string, paymentMethod: PaymentMethodName | undefined): Promise<void> {
    const v = new Violations();
    const country = v.collect(() => countryOf(countryCode, "country_code"));
    if (!paymentMethod) v.add("payment_method", "is required");
    v.throwIfAny();
    if (!(await db.deleteConfig(this.sequelize, country!, paymentMethod!))) throw notFound("payment method config", `${country}/${paymentMethod}`);
  }

  /** Decrypted webhook secrets of every config of `method` (for signature checks only). */
  async webhookSecrets(method: string): Promise<string[]> {
    const configs = await db.configsOfMethod(this.sequelize, method);
    return configs.map((r) => (r.webhook_secret_enc ? this.secrets.decrypt(r.webhook_secret_enc) : undefined)).filter((s): s is string => !!s);
  }

  /**
   * The decrypted api_secret of `method` for server-side provider calls
   * (off-session charges): its config for `countryCode`, else the first
   * config (by country) that has one; undefined when none has.
   */
  async apiSecret(method: string, countryCode: string): Promise<string | undefined> {
    const usable = (await db.configsOfMethod(this.sequelize, method)).filter((r) => r.api_secret_enc);
    const chosen = usable.find((r) => r.country_code === countryCode) ?? usable[0];
    return chosen?.api_secret_enc ? this.secrets.decrypt(chosen.api_secret_enc) : undefined;
  }

  /** Saves a payment method for an account. */
  async createAccountMethod(input: AccountMethodInput, options: TransactionOptions = {}): Promise<AccountMethodView> {
    const values = validateAccountMethod(input, ACCOUNT_METHOD_FIELDS) as AccountMethodValues;
    requireId(input.accountId, "account_payment_method.account_id");
    return inTransaction(
      this.sequelize,
      async (t) => {
        await db.lockAccountDefaults(this.sequelize, t, input.accountId);
        if (input.isDefault) await db.clearDefault(this.sequelize, t, input.accountId);
        const row = await uniqueName(() => db.insertAccountMethod(this.sequelize, t, input.accountId, input.isDefault, values));
        if (row.is_default) await resumeAutoTopUpIn(this.sequelize, t, input.accountId);
        return accountMethodView(row);
      },
      options,
    );
  }

  /** An account's methods, default first, then by display name. */
  async listAccountMethods(accountId: string, requestedPageSize: number, pageToken: string): Promise<{ methods: AccountMethodView[]; nextPageToken: string }> {
    requireId(accountId, "account_id");
    const { size, after } = pageRequest({ pageSize: requestedPageSize, pageToken }, "account_methods", accountId, ["number", "string", "uuid"]);
    const found = await db.listAccountMethods(this.sequelize, accountId, after && { notDefault: after[0] as number, displayName: after[1] as string, id: after[2] as string }, size + 1);
    const { items, nextPageToken } = pageOf(found.map(accountMethodView), size, (m) => [m.isDefault ? 0 : 1, m.displayName, m.id], "account_methods", accountId);
    return { methods: items, nextPageToken };
  }

  /** Changes the fields of a saved method that `paths` name (see `accountMethodFields`). */
  async updateAccountMethod(input: AccountMethodInput, paths: string[], authorize: Authorize, options: TransactionOptions = {}): Promise<AccountMethodView> {
    const id = requireUuid(input.id, "account_payment_method.id");
    const values = validateAccountMethod(input, accountMethodFields(input, paths));
    const found = await this.findAccountMethod(id, authorize);
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await this.lockAccountMethod(t, found.account_id, id);
        const updated = await uniqueName(() => db.updateAccountMethod(this.sequelize, t, row, values));
        if (updated.is_default) await resumeAutoTopUpIn(this.sequelize, t, updated.account_id);
        return accountMethodView(updated);
      },
      options,
    );
  }

  /** Makes a saved method the account's only default. */
  async setDefaultAccountMethod(methodId: string, authorize: Authorize, options: TransactionOptions = {}): Promise<AccountMethodView> {
    const id = requireUuid(methodId, "id");
    const found = await this.findAccountMethod(id, authorize);
    return inTransaction(
      this.sequelize,
      async (t) => {
        await db.lockAccountDefaults(this.sequelize, t, found.account_id);
        let row = await this.lockAccountMethod(t, found.account_id, id);
        if (!row.is_default) {
          await db.clearDefault(this.sequelize, t, found.account_id);
          row = await db.setDefault(this.sequelize, t, row);
        }
        await resumeAutoTopUpIn(this.sequelize, t, row.account_id);
        return accountMethodView(row);
      },
      options,
    );
  }

  /** Deletes a saved method. */
  async deleteAccountMethod(methodId: string, authorize: Authorize): Promise<void> {
    const id = requireUuid(methodId, "id");
    await db.deleteAccountMethod(this.sequelize, await this.findAccountMethod(id, authorize));
  }

  private async findAccountMethod(id: string, authorize: Authorize): Promise<AccountMethodRow> {
    const row = await db.findAccountMethod(this.sequelize, id);
    if (!row) throw notFound("account payment method", id);
    authorize(row.account_id);
    return row;
  }

  private async lockAccountMethod(t: Transaction, accountId: string, id: string): Promise<AccountMethodRow> {
    const row = await db.lockAccountMethod(this.sequelize, t, accountId, id);
    if (!row) throw notFound("account payment method", id);
    return row;
  }
}

/**
 * The fields an update of a saved method changes (AIP-134): those `paths`
 * name, or with no paths every field `input` sets; INVALID_ARGUMENT on
 * update_mask when that is none, or a path names no updatable field.
 */
export function accountMethodFields(input: AccountMethodInput, paths: readonly string[]): AccountMethodField[] {
  return applyMask(paths, "account_payment_method", ACCOUNT_METHOD_FIELDS, {
    type: input.type,
    display_name: input.displayName,
    is_enabled: input.isEnabled,
    is_verified: input.isVerified,
    country_code: input.countryCode,
    instructions: input.instructions,
    metadata: input.metadata,
    provider_customer_id: input.providerCustomerId,
    provider_payment_method_id: input.providerPaymentMethodId,
  });
}

/** Runs a write of a saved method, answering ALREADY_EXISTS for a display name the account already uses. */
async function uniqueName<T>(write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (err) {
    if (err instanceof UniqueConstraintError && JSON.stringify(err.fields ?? {}).includes("display_name")) {
      throw new BillingError("already_exists", Reason.AlreadyExists, "this account already has a payment method with that display name", [
        { field: "account_payment_method.display_name", description: "must be unique per account" },
      ]);
    }
    throw err;
  }
}

function countryOf(value: string, field: string): string {
  const c = value.toUpperCase();
  if (!COUNTRY_RE.test(c)) throw invalidField(field, "must be an ISO 3166-1 alpha-2 country code like US");
  return c;
}

function validateAccountMethod(input: AccountMethodInput, fields: readonly AccountMethodField[]): Partial<AccountMethodValues> {
  const v = new Violations();
  const f = (n: string) => `account_payment_method.${n}`;
  const out: Partial<AccountMethodValues> = {};
  for (const field of fields) {
    switch (field) {
      case "type":
        if (!input.type) v.add(f("type"), "is required");
        else out.type = input.type;
        break;
      case "display_name":
        if (input.displayName === "") v.add(f("display_name"), "is required");
        else if (v.collect(() => checkText(input.displayName, f("display_name"))) !== undefined) out.display_name = input.displayName;
        break;
      case "country_code":
        if (input.countryCode === "") out.country_code = "";
        else {
          const c = v.collect(() => countryOf(input.countryCode, f("country_code")));
          if (c) out.country_code = c;
        }
        break;
      case "instructions":
        if (v.collect(() => checkText(input.instructions, f("instructions"), 4000)) !== undefined) out.instructions = input.instructions;
        break;
      case "is_enabled":
      case "is_verified":
        out[field] = field === "is_enabled" ? input.isEnabled : input.isVerified;
        break;
      case "metadata":
        v.collect(() => checkMetadata(input.metadata, f("metadata")));
        out.metadata = input.metadata;
        break;
      case "provider_customer_id":
      case "provider_payment_method_id": {
        const value = field === "provider_customer_id" ? input.providerCustomerId : input.providerPaymentMethodId;
        if (v.collect(() => checkText(value, f(field))) !== undefined) out[field] = value;
        break;
      }
    }
  }
  v.throwIfAny();
  return out;
}

function configView(r: MethodConfigRow): MethodConfigView {
  return {
    countryCode: r.country_code,
    paymentMethod: r.payment_method as PaymentMethodName,
    isEnabled: r.is_enabled,
    displayName: r.display_name,
    instructions: r.instructions,
    bankName: r.bank_name,
    accountNumber: r.account_number,
    routingNumber: r.routing_number,
    swiftCode: r.swift_code,
    walletType: r.wallet_type,
    walletId: r.wallet_id,
    webhookUrl: r.webhook_url,
    sortOrder: r.sort_order,
    hasApiKey: !!r.api_key_enc,
    hasApiSecret: !!r.api_secret_enc,
    hasWebhookSecret: !!r.webhook_secret_enc,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function accountMethodView(r: AccountMethodRow): AccountMethodView {
  return {
    id: r.id,
    accountId: r.account_id,
    type: r.type as PaymentMethodName,
    displayName: r.display_name,
    isDefault: r.is_default,
    isEnabled: r.is_enabled,
    isVerified: r.is_verified,
    countryCode: r.country_code,
    instructions: r.instructions,
    metadata: r.metadata ?? {},
    providerCustomerId: r.provider_customer_id ?? "",
    providerPaymentMethodId: r.provider_payment_method_id ?? "",
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}
