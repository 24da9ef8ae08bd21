/**
 * The auto_top_up_settings table, and what the settings rules read of the
 * tables around it (the package bought, the default payment method charged).
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows } from "../sql.js";

export interface SettingsRow {
  account_id: string;
  enabled: boolean;
  threshold: string;
  package_id: string | null;
  monthly_limit: number;
  monthly_amount_limit: string | null;
  disabled_reason: string;
  disabled_at: Date | null;
  updated_at: Date;
}

/** The columns UpdateAutoTopUp writes. */
export interface SettingsWrite {
  enabled: boolean;
  threshold: string;
  packageId: string | null;
  monthlyLimit: number;
  /** NUMERIC text, or null for none. */
  monthlyAmountLimit: string | null;
  /** Whether the reason a failure left is cleared. */
  clearReason: boolean;
  updatedBy: string;
}

/** A credit package as the top-up rules see it. */
export interface TopUpPackageRow {
  id: string;
  slug: string;
  price: string;
  discount_percentage: number;
  currency: string;
  is_active: boolean;
}

/** A saved payment method, as an off-session charge needs it. */
export interface ChargeableMethodRow {
  id: string;
  type: string;
  is_enabled: boolean;
  country_code: string;
  provider_customer_id: string;
  provider_payment_method_id: string;
}

/** An account's settings with the currency of their package, if set. */
export function settingsOf(db: Sequelize, accountId: string): Promise<(SettingsRow & { currency: string | null }) | undefined> {
  return row(db, `SELECT s.*, p.currency FROM auto_top_up_settings s LEFT JOIN credit_packages p ON p.id = s.package_id WHERE s.account_id = $1`, [accountId]);
}

/** The account's settings row, created with defaults if missing, locked. */
export async function lockSettings(db: Sequelize, t: Transaction, accountId: string): Promise<SettingsRow> {
  await rows(db, `INSERT INTO auto_top_up_settings (account_id) VALUES ($1) ON CONFLICT (account_id) DO NOTHING RETURNING account_id`, [accountId], t);
  return (await row<SettingsRow>(db, `SELECT * FROM auto_top_up_settings WHERE account_id = $1 FOR UPDATE`, [accountId], t))!;
}

/** What a charge checks of the settings, locked; undefined when never set. */
export function chargeSettingsOf(db: Sequelize, t: Transaction, accountId: string): Promise<{ enabled: boolean; monthly_limit: number; monthly_amount_limit: string | null } | undefined> {
  return row(db, `SELECT enabled, monthly_limit, monthly_amount_limit FROM auto_top_up_settings WHERE account_id = $1 FOR UPDATE`, [accountId], t);
}

/** Writes the settings; returns them. */
export async function writeSettings(db: Sequelize, t: Transaction, accountId: string, w: SettingsWrite): Promise<SettingsRow> {
  const written = await row<SettingsRow>(
    db,
    `UPDATE auto_top_up_settings SET enabled = $2, threshold = $3, package_id = $4, monthly_limit = $5, monthly_amount_limit = $6,
       disabled_reason = CASE WHEN $7 THEN '' ELSE disabled_reason END, disabled_at = CASE WHEN $7 THEN NULL ELSE disabled_at END,
       updated_by = $8, updated_at = now()
     WHERE account_id = $1 RETURNING *`,
    [accountId, w.enabled, w.threshold, w.packageId, w.monthlyLimit, w.monthlyAmountLimit, w.clearReason, w.updatedBy],
    t,
  );
  return written!;
}

/** Switches enabled settings off with `reason`; whether they were on. */
export async function pauseSettings(db: Sequelize, t: Transaction, accountId: string, reason: string): Promise<boolean> {
  const paused = await rows(
    db,
    `UPDATE auto_top_up_settings SET enabled = false, disabled_reason = $2, disabled_at = now(), updated_at = now()
     WHERE account_id = $1 AND enabled RETURNING account_id`,
    [accountId, reason],
    t,
  );
  return paused.length > 0;
}

/** Switches settings a failure switched off back on; whether there were any. */
export async function resumeSettings(db: Sequelize, t: Transaction, accountId: string): Promise<boolean> {
  const resumed = await rows(
    db,
    `UPDATE auto_top_up_settings SET enabled = true, disabled_reason = '', disabled_at = NULL, updated_at = now()
     WHERE account_id = $1 AND disabled_reason <> '' AND NOT enabled RETURNING account_id`,
    [accountId],
    t,
  );
  return resumed.length > 0;
}

/**
 * The condition for settings that a declined charge switched off before
 * this calendar month (UTC): the account's latest attempt failed with a
 * FAILED payment, i.e. the provider declined the charge.
 */
const DECLINED_BEFORE_THIS_MONTH = `s.disabled_reason <> '' AND NOT s.enabled
  AND s.disabled_at < date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  AND (SELECT p.status FROM auto_top_ups a JOIN payments p ON p.account_id = a.account_id AND p.id = a.payment_id
       WHERE a.account_id = s.account_id ORDER BY a.created_at DESC LIMIT 1) = 'failed'`;

/** Accounts whose settings a declined charge switched off before this calendar month (UTC). */
export async function declinedBeforeThisMonth(db: Sequelize, limit: number): Promise<string[]> {
  const found = await rows<{ account_id: string }>(db, `SELECT s.account_id FROM auto_top_up_settings s WHERE ${DECLINED_BEFORE_THIS_MONTH} LIMIT $1`, [limit]);
  return found.map((r) => r.account_id);
}

/** Switches such settings back on (checked again under the account lock); whether they were. */
export async function resumeDeclinedBeforeThisMonth(db: Sequelize, t: Transaction, accountId: string): Promise<boolean> {
  const resumed = await rows(
    db,
    `UPDATE auto_top_up_settings s SET enabled = true, disabled_reason = '', disabled_at = NULL, updated_at = now()
     WHERE s.account_id = $1 AND ${DECLINED_BEFORE_THIS_MONTH} RETURNING s.account_id`,
    [accountId],
    t,
  );
  return resumed.length > 0;
}

/** A credit package, if it exists. */
export function packageOf(db: Sequelize, t: Transaction, packageId: string): Promise<TopUpPackageRow | undefined> {
  return row(db, `SELECT id, slug, price, discount_percentage, currency, is_active FROM credit_packages WHERE id = $1`, [packageId], t);
}

/** The account's default payment method, if any. */
export function defaultMethodOf(db: Sequelize, t: Transaction | undefined, accountId: string): Promise<ChargeableMethodRow | undefined> {
  return row(
    db,
    `SELECT id, type, is_enabled, country_code, provider_customer_id, provider_payment_method_id FROM account_payment_methods WHERE account_id = $1 AND is_default`,
    [accountId],
    t,
  );
}
