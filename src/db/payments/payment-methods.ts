/**
 * The payment methods adapter: the methods offered per country
 * (payment_method_configs) and the methods accounts saved
 * (account_payment_methods). SQL only; the rules live in
 * src/domain/payments/payment-methods.ts.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows, run } from "../sql.js";

/** A payment_method_configs row; `*_enc` are AES-256-GCM ciphertexts. */
export interface MethodConfigRow {
  id: string;
  country_code: string;
  payment_method: string;
  is_enabled: boolean;
  display_name: string;
  instructions: string;
  bank_name: string;
  account_number: string;
  routing_number: string;
  swift_code: string;
  wallet_type: string;
  wallet_id: string;
  webhook_url: string;
  webhook_secret_enc: string | null;
  api_key_enc: string | null;
  api_secret_enc: string | null;
  sort_order: number;
  created_at: Date;
  updated_at: Date;
}

/** The plain (not secret) columns of a config. */
export type MethodConfigValues = Omit<MethodConfigRow, "id" | "webhook_secret_enc" | "api_key_enc" | "api_secret_enc" | "created_at" | "updated_at">;

/** Ciphertexts to store: a string replaces, null clears, undefined keeps what is stored. */
export interface EncryptedSecrets {
  api_key_enc?: string | null;
  api_secret_enc?: string | null;
  webhook_secret_enc?: string | null;
}

const CONFIG_COLUMNS = ["is_enabled", "display_name", "instructions", "bank_name", "account_number", "routing_number", "swift_code", "wallet_type", "wallet_id", "webhook_url", "sort_order"] as const;
const SECRET_COLUMNS = ["api_key_enc", "api_secret_enc", "webhook_secret_enc"] as const;

/** The enabled configs of a country, in display order. */
export function enabledConfigsOf(db: Sequelize, countryCode: string): Promise<MethodConfigRow[]> {
  return rows<MethodConfigRow>(db, `SELECT * FROM payment_method_configs WHERE country_code = $1 AND is_enabled ORDER BY sort_order, payment_method`, [countryCode]);
}

/** Every config of a method, by country. */
export function configsOfMethod(db: Sequelize, paymentMethod: string): Promise<MethodConfigRow[]> {
  return rows<MethodConfigRow>(db, `SELECT * FROM payment_method_configs WHERE payment_method = $1 ORDER BY country_code`, [paymentMethod]);
}

/** Creates or replaces a country's config of a method, in one statement; secrets as `secrets` says. */
export async function upsertConfig(db: Sequelize, t: Transaction, v: MethodConfigValues, secrets: EncryptedSecrets): Promise<MethodConfigRow> {
  const bind: unknown[] = [v.country_code, v.payment_method, ...CONFIG_COLUMNS.map((c) => v[c]), ...SECRET_COLUMNS.map((c) => secrets[c] ?? null)];
  const keep = SECRET_COLUMNS.map((c) => `${c} = ${secrets[c] === undefined ? `payment_method_configs.${c}` : `EXCLUDED.${c}`}`);
  return (await row<MethodConfigRow>(
    db,
    `INSERT INTO payment_method_configs (country_code, payment_method, ${CONFIG_COLUMNS.join(", ")}, ${SECRET_COLUMNS.join(", ")})
     VALUES (${bind.map((_, i) => `$${i + 1}`).join(", ")})
     ON CONFLICT (country_code, payment_method) DO UPDATE SET ${CONFIG_COLUMNS.map((c) => `${c} = EXCLUDED.${c}`).join(", ")}, ${keep.join(", ")}, updated_at = now()
     RETURNING *`,
    bind,
    t,
  ))!;
}

/** Deletes a country's config of a method; whether there was one. */
export async function deleteConfig(db: Sequelize, countryCode: string, paymentMethod: string): Promise<boolean> {
  return (await rows(db, `DELETE FROM payment_method_configs WHERE country_code = $1 AND payment_method = $2 RETURNING 1`, [countryCode, paymentMethod])).length > 0;
}

/** An account_payment_methods row. */
export interface AccountMethodRow {
  account_id: string;
  id: string;
  type: string;
  display_name: string;
  is_default: boolean;
  is_enabled: boolean;
  is_verified: boolean;
  country_code: string;
  instructions: string;
  metadata: Record<string, unknown>;
  /** Stripe: the customer and payment method charged off-session (auto top-up); "" when unknown. */
  provider_customer_id: string;
  provider_payment_method_id: string;
  created_at: Date;
  updated_at: Date;
}

/** The columns a caller sets on a saved method. */
export type AccountMethodValues = Pick<
  AccountMethodRow,
  "type" | "display_name" | "is_enabled" | "is_verified" | "country_code" | "instructions" | "metadata" | "provider_customer_id" | "provider_payment_method_id"
>;

const ACCOUNT_METHOD_COLUMNS = ["type", "display_name", "is_enabled", "is_verified", "country_code", "instructions", "metadata", "provider_customer_id", "provider_payment_method_id"] as const;

const bindValue = (column: string, value: unknown) => (column === "metadata" ? JSON.stringify(value) : value);
const placeholder = (column: string, n: number) => (column === "metadata" ? `$${n}::jsonb` : `$${n}`);

/** Saves a method for an account. */
export async function insertAccountMethod(db: Sequelize, t: Transaction, accountId: string, isDefault: boolean, v: AccountMethodValues): Promise<AccountMethodRow> {
  const bind: unknown[] = [accountId, isDefault, ...ACCOUNT_METHOD_COLUMNS.map((c) => bindValue(c, v[c]))];
  return (await row<AccountMethodRow>(
    db,
    `INSERT INTO account_payment_methods (account_id, is_default, ${ACCOUNT_METHOD_COLUMNS.join(", ")})
     VALUES ($1, $2, ${ACCOUNT_METHOD_COLUMNS.map((c, i) => placeholder(c, i + 3)).join(", ")}) RETURNING *`,
    bind,
    t,
  ))!;
}

/** Changes the given columns of a saved method. */
export async function updateAccountMethod(db: Sequelize, t: Transaction, m: Pick<AccountMethodRow, "account_id" | "id">, v: Partial<AccountMethodValues>): Promise<AccountMethodRow> {
  const bind: unknown[] = [m.account_id, m.id];
  const sets = ACCOUNT_METHOD_COLUMNS.filter((c) => v[c] !== undefined).map((c) => `${c} = ${placeholder(c, bind.push(bindValue(c, v[c])))}`);
  return (await row<AccountMethodRow>(
    db,
    `UPDATE account_payment_methods SET ${[...sets, "updated_at = now()"].join(", ")} WHERE account_id = $1 AND id = $2 RETURNING *`,
    bind,
    t,
  ))!;
}

/** A saved method by id, or undefined. */
export function findAccountMethod(db: Sequelize, id: string): Promise<AccountMethodRow | undefined> {
  return row<AccountMethodRow>(db, `SELECT * FROM account_payment_methods WHERE id = $1`, [id]);
}

/** A saved method locked FOR UPDATE in `t`, or undefined. */
export function lockAccountMethod(db: Sequelize, t: Transaction, accountId: string, id: string): Promise<AccountMethodRow | undefined> {
  return row<AccountMethodRow>(db, `SELECT * FROM account_payment_methods WHERE account_id = $1 AND id = $2 FOR UPDATE`, [accountId, id], t);
}

/** An account's methods, default first, then by display name and id, after a keyset position, `limit` at most. */
export function listAccountMethods(db: Sequelize, accountId: string, after: { notDefault: number; displayName: string; id: string } | undefined, limit: number): Promise<AccountMethodRow[]> {
  const bind: unknown[] = [accountId];
  const keyset = after
    ? `AND (CASE WHEN is_default THEN 0 ELSE 1 END, display_name, id) > ($${bind.push(after.notDefault)}, $${bind.push(after.displayName)}, $${bind.push(after.id)}::uuid)`
    : "";
  return rows<AccountMethodRow>(
    db,
    `SELECT * FROM account_payment_methods WHERE account_id = $1 ${keyset}
     ORDER BY CASE WHEN is_default THEN 0 ELSE 1 END, display_name, id LIMIT $${bind.push(limit)}`,
    bind,
  );
}

/** Serialises default changes of an account until `t` ends. */
export async function lockAccountDefaults(db: Sequelize, t: Transaction, accountId: string): Promise<void> {
  await run(db, `SELECT pg_advisory_xact_lock(hashtext('billing.account_methods'), hashtext($1))`, [accountId], t);
}

/** The account's default method is no longer its default. */
export async function clearDefault(db: Sequelize, t: Transaction, accountId: string): Promise<void> {
  await run(db, `UPDATE account_payment_methods SET is_default = false, updated_at = now() WHERE account_id = $1 AND is_default`, [accountId], t);
}

/** Makes a method its account's default (after `clearDefault`). */
export async function setDefault(db: Sequelize, t: Transaction, m: Pick<AccountMethodRow, "account_id" | "id">): Promise<AccountMethodRow> {
  return (await row<AccountMethodRow>(db, `UPDATE account_payment_methods SET is_default = true, updated_at = now() WHERE account_id = $1 AND id = $2 RETURNING *`, [m.account_id, m.id], t))!;
}

/** Deletes a saved method. */
export async function deleteAccountMethod(db: Sequelize, m: Pick<AccountMethodRow, "account_id" | "id">): Promise<void> {
  await run(db, `DELETE FROM account_payment_methods WHERE account_id = $1 AND id = $2`, [m.account_id, m.id]);
}
