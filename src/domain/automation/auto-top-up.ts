/**
 * Auto top-up (issue 16): when a deduction takes an account's balance from
 * at or above its threshold to below it, a credit package is bought with
 * the account's default payment method, off-session, once.
 *
 * Rules:
 * - The crossing is found by the balance trigger (billing_events.sql) in the
 *   deduction's own transaction, which only inserts one `auto_top_ups` row
 *   (pending; at most one pending or processing per account, so racing
 *   deductions and replicas start one top-up per crossing). Everything else
 *   happens later, in auto-top-up-worker.ts: a deduction is never slowed
 *   or failed by a provider call.
 * - Settings: enabled; threshold (credits, above zero while enabled);
 *   package_id (an active credit package: the top-up buys exactly it; no
 *   target balance, so a top-up's price is known before it is charged);
 *   monthly_limit (top-ups per calendar month in UTC, 0: none);
 *   monthly_amount_limit (money per calendar month in UTC, in the package's
 *   currency; unset: none). Top-ups that succeeded or are being charged
 *   count; a top-up that would go past a limit is SKIPPED with the reason.
 * - Enabling needs a default payment method that can be charged
 *   off-session: enabled, of a provider that can (STRIPE), with the
 *   provider's customer and payment method ids.
 * - A failure (declined, no chargeable method, the package withdrawn, no
 *   answer from the provider after every try) switches the settings off
 *   with `disabled_reason`. They come back on when enabled again, when the
 *   account's default payment method is saved, changed or updated, or at
 *   the start of the next calendar month (UTC), when the limits reset.
 *   Switching them off by hand clears the reason (and nothing resumes them).
 * - Every change of the settings calls billing_rewatch in its transaction
 *   (the trigger only looks at accounts whose watch bounds allow a crossing).
 */
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { ANY_AMOUNT, Dec, amountIn, formatMoney, parseMoney } from "../../money.js";
import { Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { maskField } from "../field-mask.js";
import { decodePageToken, pageOf, pageSize } from "../pagination.js";
import { PROVIDERS } from "../payments/providers/index.js";
import { requireId, requireUuid } from "../validation.js";

/** The settings of one account. */
export interface AutoTopUpView {
  accountId: string;
  enabled: boolean;
  threshold: bigint;
  packageId: string;
  monthlyLimit: number;
  /** "" when there is none. */
  monthlyAmountLimit: string;
  disabledReason: string;
  disabledAt?: Date;
  updatedAt?: Date;
}

export type AutoTopUpInput = Omit<AutoTopUpView, "disabledReason" | "disabledAt" | "updatedAt">;

export type AttemptState = "pending" | "processing" | "succeeded" | "failed" | "skipped";

/** One top-up attempt. */
export interface AttemptView {
  id: string;
  accountId: string;
  state: AttemptState;
  packageId: string;
  credits: bigint;
  threshold: bigint;
  balanceAtTrigger: bigint;
  invoiceId: string;
  paymentId: string;
  providerReference: string;
  paymentMethodId: string;
  failureReason: string;
  tries: number;
  createdAt: Date;
  completedAt?: Date;
}

export const AUTO_TOP_UP_FIELDS = ["enabled", "threshold", "package_id", "monthly_limit", "monthly_amount_limit"] as const;
type Field = (typeof AUTO_TOP_UP_FIELDS)[number];

/** The reason a FAILED_PRECONDITION names when no default method can be charged off-session. */
const NO_CHARGEABLE_METHOD = Reason.PaymentMethodRequired;

interface SettingsRow {
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

interface PackageRow {
  id: string;
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

/** Why the account's default method cannot be charged off-session; undefined when it can. */
export function unchargeable(method: ChargeableMethodRow | undefined): string | undefined {
  if (!method) return "the account has no default payment method";
  if (!method.is_enabled) return "the account's default payment method is disabled";
  if (!PROVIDERS.get(method.type)?.chargeOffSession) return `the account's default payment method (${method.type.toUpperCase()}) cannot be charged off-session`;
  if (!method.provider_customer_id || !method.provider_payment_method_id) return "the account's default payment method has no provider_customer_id and provider_payment_method_id";
  return undefined;
}

/** The account's default payment method, if any. */
export async function defaultMethodIn(sequelize: Sequelize, t: Transaction | undefined, accountId: string): Promise<ChargeableMethodRow | undefined> {
  const [row] = await sequelize.query<ChargeableMethodRow>(
    `SELECT id, type, is_enabled, country_code, provider_customer_id, provider_payment_method_id FROM account_payment_methods WHERE account_id = $1 AND is_default`,
    { bind: [accountId], transaction: t, type: QueryTypes.SELECT },
  );
  return row;
}

/**
 * Resumes settings that switched themselves off, inside the caller's
 * transaction: called when the account's default payment method is saved,
 * changed or updated.
 */
export async function resumeAutoTopUpIn(sequelize: Sequelize, t: Transaction, accountId: string): Promise<void> {
  const rows = await sequelize.query(
    `UPDATE auto_top_up_settings SET enabled = true, disabled_reason = '', disabled_at = NULL, updated_at = now()
     WHERE account_id = $1 AND disabled_reason <> '' AND NOT enabled RETURNING account_id`,
    { bind: [accountId], transaction: t, type: QueryTypes.SELECT },
  );
  if (rows.length > 0) await sequelize.query(`SELECT billing_rewatch($1)`, { bind: [accountId], transaction: t, type: QueryTypes.SELECT });
}

/** Switches an account's enabled settings off on their own (after a failure), inside the caller's transaction. */
export async function pauseAutoTopUpIn(sequelize: Sequelize, t: Transaction, accountId: string, reason: string): Promise<void> {
  const rows = await sequelize.query(
    `UPDATE auto_top_up_settings SET enabled = false, disabled_reason = $2, disabled_at = now(), updated_at = now()
     WHERE account_id = $1 AND enabled RETURNING account_id`,
    { bind: [accountId, [...reason].slice(0, 255).join("")], transaction: t, type: QueryTypes.SELECT },
  );
  if (rows.length > 0) await sequelize.query(`SELECT billing_rewatch($1)`, { bind: [accountId], transaction: t, type: QueryTypes.SELECT });
}

/** The auto top-up settings and the record of attempts. */
export class AutoTopUps {
  constructor(private readonly sequelize: Sequelize) {}

  /** An account's settings; disabled defaults when never set. */
  async get(accountId: string): Promise<AutoTopUpView> {
    requireId(accountId, "account_id");
    const [row] = await this.sequelize.query<SettingsRow & { currency: string | null }>(
      `SELECT s.*, p.currency FROM auto_top_up_settings s LEFT JOIN credit_packages p ON p.id = s.package_id WHERE s.account_id = $1`,
      { bind: [accountId], type: QueryTypes.SELECT },
    );
    return row ? settingsView(row, row.currency) : defaults(accountId);
  }

  /** Changes the fields `paths` names (all non-default ones when empty); returns the settings now. */
  async update(input: AutoTopUpInput, paths: string[], actor: string, options: TransactionOptions = {}): Promise<AutoTopUpView> {
    const v = new Violations();
    const f = (n: string) => `auto_top_up.${n}`;
    v.collect(() => requireId(input.accountId, f("account_id")));
    let fields: Field[] = [];
    if (paths.length) {
      for (const p of paths) {
        const field = v.collect(() => maskField(p, "auto_top_up", AUTO_TOP_UP_FIELDS));
        if (field && !fields.includes(field)) fields.push(field);
      }
    } else {
      fields = AUTO_TOP_UP_FIELDS.filter((name) => {
        const value = { enabled: input.enabled, threshold: input.threshold, package_id: input.packageId, monthly_limit: input.monthlyLimit, monthly_amount_limit: input.monthlyAmountLimit }[name];
        return !(value === false || value === 0n || value === 0 || value === "");
      });
      if (fields.length === 0) v.add("update_mask", "names no field to update");
    }
    let amountLimit: Dec | undefined;
    for (const field of fields) {
      switch (field) {
        case "threshold":
          if (input.threshold < 0n) v.add(f("threshold"), "must not be negative");
          break;
        case "package_id":
          if (input.packageId !== "") v.collect(() => requireUuid(input.packageId, f("package_id")));
          break;
        case "monthly_limit":
          if (input.monthlyLimit < 0) v.add(f("monthly_limit"), "must not be negative (0: no limit)");
          break;
        case "monthly_amount_limit":
          if (input.monthlyAmountLimit !== "") amountLimit = v.collect(() => parseMoney(input.monthlyAmountLimit, f("monthly_amount_limit"), ANY_AMOUNT));
          break;
        case "enabled":
          break;
      }
    }
    v.throwIfAny();
    const packageId = fields.includes("package_id") ? input.packageId.toLowerCase() : undefined;
    return inTransaction(
      this.sequelize,
      async (t) => {
        await this.sequelize.query(`INSERT INTO auto_top_up_settings (account_id) VALUES ($1) ON CONFLICT (account_id) DO NOTHING`, { bind: [input.accountId], transaction: t });
        const [current] = await this.sequelize.query<SettingsRow>(`SELECT * FROM auto_top_up_settings WHERE account_id = $1 FOR UPDATE`, {
          bind: [input.accountId],
          transaction: t,
          type: QueryTypes.SELECT,
        });
        const next = {
          enabled: fields.includes("enabled") ? input.enabled : current!.enabled,
          threshold: fields.includes("threshold") ? input.threshold : BigInt(current!.threshold),
          packageId: packageId !== undefined ? packageId || null : current!.package_id,
          monthlyLimit: fields.includes("monthly_limit") ? input.monthlyLimit : current!.monthly_limit,
          monthlyAmountLimit: fields.includes("monthly_amount_limit") ? (amountLimit ?? null) : current!.monthly_amount_limit === null ? null : new Dec(current!.monthly_amount_limit),
        };
        let pkg: PackageRow | undefined;
        if (next.packageId) {
          [pkg] = await this.sequelize.query<PackageRow>(`SELECT id, currency, is_active FROM credit_packages WHERE id = $1`, { bind: [next.packageId], transaction: t, type: QueryTypes.SELECT });
          if (!pkg) throw notFound("credit package", next.packageId);
        }
        if (pkg && next.monthlyAmountLimit && next.monthlyAmountLimit.decimalPlaces() > amountIn(pkg.currency).scale) {
          throw invalidField(f("monthly_amount_limit"), `has more decimal places than the package's currency ${pkg.currency} has (${amountIn(pkg.currency).scale})`);
        }
        if (next.enabled) {
          const missing = new Violations();
          if (next.threshold <= 0n) missing.add(f("threshold"), "must be greater than zero while auto top-up is enabled");
          if (!pkg) missing.add(f("package_id"), "is required while auto top-up is enabled");
          missing.throwIfAny();
          if (!pkg!.is_active) throw failedPrecondition(Reason.PackageInactive, `credit package ${next.packageId} is not for sale`, { package_id: next.packageId! });
          const why = unchargeable(await defaultMethodIn(this.sequelize, t, input.accountId));
          if (why) throw failedPrecondition(NO_CHARGEABLE_METHOD, `auto top-up cannot be enabled: ${why}`, { account_id: input.accountId });
        }
        // Switching on or off by hand is the caller's decision: a reason left by a failure no longer applies.
        const clearReason = fields.includes("enabled");
        const [row] = await this.sequelize.query<SettingsRow>(
          `UPDATE auto_top_up_settings SET enabled = $2, threshold = $3, package_id = $4, monthly_limit = $5, monthly_amount_limit = $6,
             disabled_reason = CASE WHEN $7 THEN '' ELSE disabled_reason END, disabled_at = CASE WHEN $7 THEN NULL ELSE disabled_at END,
             updated_by = $8, updated_at = now()
           WHERE account_id = $1 RETURNING *`,
          {
            bind: [input.accountId, next.enabled, next.threshold.toString(), next.packageId, next.monthlyLimit, next.monthlyAmountLimit?.toFixed(4) ?? null, clearReason, actor],
            transaction: t,
            type: QueryTypes.SELECT,
          },
        );
        await this.sequelize.query(`SELECT billing_rewatch($1)`, { bind: [input.accountId], transaction: t, type: QueryTypes.SELECT });
        return settingsView(row!, pkg?.currency ?? null);
      },
      options,
    );
  }

  /** An account's attempts, newest first. */
  async list(accountId: string, requestedPageSize: number, pageToken: string): Promise<{ attempts: AttemptView[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(accountId, "account_id"));
    const size = v.collect(() => pageSize(requestedPageSize));
    const after = v.collect(() => decodePageToken(pageToken, "auto_top_ups", accountId));
    v.throwIfAny();
    const bind: unknown[] = [accountId];
    let keyset = "";
    if (after) {
      const [created, id] = after;
      if (typeof created !== "string" || typeof id !== "string") throw invalidField("page_token", "is not a valid page token for this request");
      keyset = `AND (a.created_at, a.id) < ($${bind.push(created)}::timestamptz, $${bind.push(id)}::uuid)`;
    }
    const rows = await this.sequelize.query<AttemptRow & { created_key: string }>(
      `SELECT ${ATTEMPT_COLUMNS}, to_char(a.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key
       FROM auto_top_ups a ${ATTEMPT_JOINS}
       WHERE a.account_id = $1 ${keyset} ORDER BY a.created_at DESC, a.id DESC LIMIT $${bind.push(size! + 1)}`,
      { bind, type: QueryTypes.SELECT },
    );
    const page = pageOf(rows, size!, (r) => [r.created_key, r.id], "auto_top_ups", accountId);
    return { attempts: page.items.map(attemptView), nextPageToken: page.nextPageToken };
  }
}

/** An attempt row with the credits of its package. */
export interface AttemptRow {
  account_id: string;
  id: string;
  state: AttemptState;
  package_id: string;
  threshold: string;
  balance_at_trigger: string;
  invoice_id: string | null;
  payment_id: string | null;
  provider_reference: string | null;
  payment_method_id: string | null;
  provider_customer_id: string | null;
  provider_payment_method_id: string | null;
  failure_reason: string;
  attempts: number;
  created_at: Date;
  completed_at: Date | null;
  credits: string | null;
}

export const ATTEMPT_COLUMNS = `a.*, COALESCE(i.credit_package_credits, p.credits)::text AS credits`;
export const ATTEMPT_JOINS = `LEFT JOIN invoices i ON i.account_id = a.account_id AND i.id = a.invoice_id LEFT JOIN credit_packages p ON p.id = a.package_id`;

export function attemptView(r: AttemptRow): AttemptView {
  return {
    id: r.id,
    accountId: r.account_id,
    state: r.state,
    packageId: r.package_id,
    credits: BigInt(r.credits ?? 0),
    threshold: BigInt(r.threshold),
    balanceAtTrigger: BigInt(r.balance_at_trigger),
    invoiceId: r.invoice_id ?? "",
    paymentId: r.payment_id ?? "",
    providerReference: r.provider_reference ?? "",
    paymentMethodId: r.payment_method_id ?? "",
    failureReason: r.failure_reason,
    tries: r.attempts,
    createdAt: r.created_at,
    ...(r.completed_at ? { completedAt: r.completed_at } : {}),
  };
}

function defaults(accountId: string): AutoTopUpView {
  return { accountId, enabled: false, threshold: 0n, packageId: "", monthlyLimit: 0, monthlyAmountLimit: "", disabledReason: "" };
}

function settingsView(r: SettingsRow, currency: string | null): AutoTopUpView {
  return {
    accountId: r.account_id,
    enabled: r.enabled,
    threshold: BigInt(r.threshold),
    packageId: r.package_id ?? "",
    monthlyLimit: r.monthly_limit,
    monthlyAmountLimit: r.monthly_amount_limit === null ? "" : formatMoney(r.monthly_amount_limit, currency ? amountIn(currency) : ANY_AMOUNT),
    disabledReason: r.disabled_reason,
    ...(r.disabled_at ? { disabledAt: r.disabled_at } : {}),
    updatedAt: r.updated_at,
  };
}
