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
 *   answer from the provider after every try, charged but not applied)
 *   switches the settings off with `disabled_reason`. They come back on
 *   when enabled again, or when the account's default payment method is
 *   saved, changed or updated. At the start of the next calendar month
 *   (UTC) only settings a declined charge switched off come back on (the
 *   card's limits may have reset); a new month fixes none of the others.
 *   Switching them off by hand clears the reason (and nothing resumes them).
 * - Every change of the settings locks the account row first
 *   (billing_lock_account), then calls billing_rewatch in its transaction
 *   (the trigger only looks at accounts whose watch bounds allow a crossing;
 *   the lock makes concurrent changes of alerts and settings queue, so the
 *   bounds are computed from every committed change).
 */
import type { Sequelize, Transaction } from "sequelize";
import {
  chargeSettingsOf,
  defaultMethodOf,
  lockSettings,
  packageOf,
  pauseSettings,
  resumeSettings,
  settingsOf,
  writeSettings,
  type ChargeableMethodRow,
  type SettingsRow,
} from "../../db/automation/auto-top-up-settings.js";
import { attemptsOf, type AttemptRow, type AttemptState } from "../../db/automation/auto-top-ups.js";
import { lockAccountWatch, rewatch } from "../../db/automation/watch.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { ANY_AMOUNT, Dec, amountIn, formatMoney, parseMoney } from "../money.js";
import { Reason, Violations, failedPrecondition, invalidField, notFound } from "../errors.js";
import { applyMask } from "../field-mask.js";
import { pageOf, pageRequest } from "../pagination.js";
import { PROVIDERS } from "../payments/providers/index.js";
import { requireId, requireUuid } from "../validation.js";

export type { AttemptState };

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

const AUTO_TOP_UP_FIELDS = ["enabled", "threshold", "package_id", "monthly_limit", "monthly_amount_limit"] as const;

/** The reason a FAILED_PRECONDITION names when no default method can be charged off-session. */
const NO_CHARGEABLE_METHOD = Reason.PaymentMethodRequired;

/** The longest disabled_reason kept (the column's width). */
const MAX_DISABLED_REASON = 255;

/** Why the account's default method cannot be charged off-session; undefined when it can. */
export function unchargeable(method: ChargeableMethodRow | undefined): string | undefined {
  if (!method) return "the account has no default payment method";
  if (!method.is_enabled) return "the account's default payment method is disabled";
  if (!PROVIDERS.get(method.type)?.chargeOffSession) return `the account's default payment method (${method.type.toUpperCase()}) cannot be charged off-session`;
  if (!method.provider_customer_id || !method.provider_payment_method_id) return "the account's default payment method has no provider_customer_id and provider_payment_method_id";
  return undefined;
}

/**
 * Resumes settings that switched themselves off, inside the caller's
 * transaction: called when the account's default payment method is saved,
 * changed or updated.
 */
export async function resumeAutoTopUpIn(sequelize: Sequelize, t: Transaction, accountId: string): Promise<void> {
  await lockAccountWatch(sequelize, t, accountId);
  if (await resumeSettings(sequelize, t, accountId)) await rewatch(sequelize, t, accountId);
}

/** Switches an account's enabled settings off on their own (after a failure), inside the caller's transaction. */
export async function pauseAutoTopUpIn(sequelize: Sequelize, t: Transaction, accountId: string, reason: string): Promise<void> {
  await lockAccountWatch(sequelize, t, accountId);
  if (await pauseSettings(sequelize, t, accountId, [...reason].slice(0, MAX_DISABLED_REASON).join(""))) await rewatch(sequelize, t, accountId);
}

/** What a charge checks of the settings, locked after the account row (so a failure can switch them off in the same transaction). */
export async function chargeSettingsIn(sequelize: Sequelize, t: Transaction, accountId: string) {
  await lockAccountWatch(sequelize, t, accountId);
  return chargeSettingsOf(sequelize, t, accountId);
}

/** The auto top-up settings and the record of attempts. */
export class AutoTopUps {
  constructor(private readonly sequelize: Sequelize) {}

  /** An account's settings; disabled defaults when never set. */
  async get(accountId: string): Promise<AutoTopUpView> {
    requireId(accountId, "account_id");
    const found = await settingsOf(this.sequelize, accountId);
    return found ? settingsView(found, found.currency) : defaults(accountId);
  }

  /** Changes the fields `paths` names (all non-default ones when empty); returns the settings now. */
  async update(input: AutoTopUpInput, paths: string[], actor: string, options: TransactionOptions = {}): Promise<AutoTopUpView> {
    const v = new Violations();
    const f = (n: string) => `auto_top_up.${n}`;
    v.collect(() => requireId(input.accountId, f("account_id")));
    const populated = { enabled: input.enabled, threshold: input.threshold, package_id: input.packageId, monthly_limit: input.monthlyLimit, monthly_amount_limit: input.monthlyAmountLimit };
    const fields = v.collect(() => applyMask(paths, "auto_top_up", AUTO_TOP_UP_FIELDS, populated)) ?? [];
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
        // The account row first: concurrent changes of what it watches queue here (billing_events.sql).
        await lockAccountWatch(this.sequelize, t, input.accountId);
        const current = await lockSettings(this.sequelize, t, input.accountId);
        const next = {
          enabled: fields.includes("enabled") ? input.enabled : current.enabled,
          threshold: fields.includes("threshold") ? input.threshold : BigInt(current.threshold),
          packageId: packageId !== undefined ? packageId || null : current.package_id,
          monthlyLimit: fields.includes("monthly_limit") ? input.monthlyLimit : current.monthly_limit,
          monthlyAmountLimit: fields.includes("monthly_amount_limit") ? (amountLimit ?? null) : current.monthly_amount_limit === null ? null : new Dec(current.monthly_amount_limit),
        };
        const pkg = next.packageId ? await packageOf(this.sequelize, t, next.packageId) : undefined;
        if (next.packageId && !pkg) throw notFound("credit package", next.packageId);
        if (pkg && next.monthlyAmountLimit && next.monthlyAmountLimit.decimalPlaces() > amountIn(pkg.currency).scale) {
          throw invalidField(f("monthly_amount_limit"), `has more decimal places than the package's currency ${pkg.currency} has (${amountIn(pkg.currency).scale})`);
        }
        if (next.enabled) {
          const missing = new Violations();
          if (next.threshold <= 0n) missing.add(f("threshold"), "must be greater than zero while auto top-up is enabled");
          if (!pkg) missing.add(f("package_id"), "is required while auto top-up is enabled");
          missing.throwIfAny();
          if (!pkg!.is_active) throw failedPrecondition(Reason.PackageInactive, `credit package ${next.packageId} is not for sale`, { package_id: next.packageId! });
          const why = unchargeable(await defaultMethodOf(this.sequelize, t, input.accountId));
          if (why) throw failedPrecondition(NO_CHARGEABLE_METHOD, `auto top-up cannot be enabled: ${why}`, { account_id: input.accountId });
        }
        const written = await writeSettings(this.sequelize, t, input.accountId, {
          enabled: next.enabled,
          threshold: next.threshold.toString(),
          packageId: next.packageId,
          monthlyLimit: next.monthlyLimit,
          monthlyAmountLimit: next.monthlyAmountLimit ? formatMoney(next.monthlyAmountLimit, ANY_AMOUNT) : null,
          // Switching on or off by hand is the caller's decision: a reason left by a failure no longer applies.
          clearReason: fields.includes("enabled"),
          updatedBy: actor,
        });
        await rewatch(this.sequelize, t, input.accountId);
        return settingsView(written, pkg?.currency ?? null);
      },
      options,
    );
  }

  /** An account's attempts, newest first. */
  async list(accountId: string, requestedPageSize: number, pageToken: string): Promise<{ attempts: AttemptView[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(accountId, "account_id"));
    const paging = v.collect(() => pageRequest({ pageSize: requestedPageSize, pageToken }, "auto_top_ups", accountId, ["timestamp", "uuid"]));
    v.throwIfAny();
    const { size, after } = paging!;
    const found = await attemptsOf(this.sequelize, accountId, after as [string, string] | undefined, size + 1);
    const page = pageOf(found, size, (r) => [r.created_key, r.id], "auto_top_ups", accountId);
    return { attempts: page.items.map(attemptView), nextPageToken: page.nextPageToken };
  }
}

function attemptView(r: AttemptRow): AttemptView {
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
