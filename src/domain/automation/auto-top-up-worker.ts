/**
 * Carries out the auto top-up attempts the balance trigger starts (rules:
 * auto-top-up.ts). Every replica runs one; they share the work through the
 * database.
 *
 * One round:
 * 1. Settings a declined charge switched off in an earlier calendar month
 *    (UTC) come back on (the card's limits may have reset); and failed
 *    attempts whose invoice a provider webhook has since paid (the charge
 *    went through after all) become SUCCEEDED.
 * 2. Due attempts are claimed: pending or processing ones with no live
 *    lease, oldest first, `FOR UPDATE SKIP LOCKED`, each given a lease
 *    (twice the charge timeout) and one more try. A replica that dies
 *    mid-attempt leaves the lease to run out; another takes over.
 * 3. A pending attempt is prepared: the settings must still be on, the
 *    package for sale, the monthly limits not reached (else SKIPPED), and
 *    the default payment method chargeable off-session (else FAILED). Its
 *    invoice is created through the package purchase path (idempotent by
 *    the attempt), and the attempt is PROCESSING with the method it charges.
 * 4. The charge goes to the provider outside any transaction, with a
 *    timeout and the attempt id as idempotency key, the same request on
 *    every try; once an answer has named the provider's payment, later
 *    tries read that payment back instead (the provider replays its first
 *    answer, e.g. `processing`, to the same request).
 * 5. Success settles through Payments.providerSucceeded, the path webhooks
 *    take: the payment SUCCEEDED, the invoice PAID, the package's credits
 *    granted as a PAID lot; then the attempt SUCCEEDED and an
 *    auto_top_up.succeeded event. If the provider's webhook settled it
 *    first, the same payment is found and nothing is granted twice.
 *    A charge made that cannot be applied (e.g. its invoice was voided
 *    meanwhile) FAILS as "charged but not applied", for manual review.
 *    A failure records a FAILED payment (when the provider made one), voids
 *    the invoice (unless an earlier try had no known outcome: a late
 *    webhook must still be able to settle it), fails the attempt with the
 *    reason, switches the settings off and writes auto_top_up.failed.
 *    No answer (timeout, network error, 5xx, 409, 429, still processing):
 *    the attempt stays PROCESSING with the reason (and the provider's
 *    payment, when the answer named it), and the next try (when the lease
 *    runs out) reads that payment back, or else sends the same request
 *    with the same idempotency key, which the provider answers with the
 *    first request's outcome rather than a second charge. After MAX_TRIES
 *    the attempt FAILS (settings off, event), and its invoice is left
 *    PENDING: should the charge have gone through after all, the
 *    provider's payment_intent.succeeded webhook still settles it, and the
 *    next round marks the attempt SUCCEEDED.
 */
import type { Sequelize, Transaction } from "sequelize";
import { declinedBeforeThisMonth, defaultMethodOf, packageOf, resumeDeclinedBeforeThisMonth } from "../../db/automation/auto-top-up-settings.js";
import {
  attemptWithCredits,
  chargeDetailsOf,
  claimDue,
  finishAttempt,
  lockAttempt,
  markProcessing,
  monthToDate,
  noteUnknownOutcome,
  paidAfterFailure,
  paymentOfRef,
  releaseTry,
  type AttemptKey,
  type AttemptRow,
} from "../../db/automation/auto-top-ups.js";
import { lockAccountWatch, rewatch } from "../../db/automation/watch.js";
import { inTransaction } from "../../db/transaction.js";
import type { Logger } from "../../logger.js";
import { Dec, amountIn, formatMoney, fromMinorUnits, toMinorUnits } from "../money.js";
import { effectivePrice } from "../credits/packages.js";
import { BillingError } from "../errors.js";
import { emitIn } from "../events/events.js";
import type { Invoices, PaymentMethodName } from "../invoices/invoices.js";
import type { PaymentMethods } from "../payments/payment-methods.js";
import type { Payments } from "../payments/payments.js";
import { PROVIDERS, type ChargeOutcome, type PaymentProvider } from "../payments/providers/index.js";
import { chargeSettingsIn, pauseAutoTopUpIn, unchargeable } from "./auto-top-up.js";

/** Tries (claims) of one attempt before it fails for want of an answer. */
const MAX_TRIES = 5;
/** Attempts one replica claims (and settings it resumes, attempts it reconciles) per round. */
const BATCH = 10;
const ACTOR = "auto_top_up";
/** The longest failure_reason kept (the column's width). */
const MAX_FAILURE_REASON = 1000;

export interface AutoTopUpWorkerOptions {
  /** How often a round runs. */
  pollMs: number;
  /** How long a charge may take before its outcome counts as unknown. */
  chargeTimeoutMs: number;
  /** Each provider's API base URL, by provider name (stripe: STRIPE_API_BASE). */
  apiBases: Record<string, string>;
}

/** What a charge needs, fixed when the attempt was prepared. */
interface Charge {
  attempt: AttemptRow;
  provider: PaymentProvider;
  invoiceId: string;
  invoiceNumber: string;
  packageSlug: string;
  total: string;
  currency: string;
  countryCode: string;
}

/** The replica's auto top-up worker. */
export class AutoTopUpWorker {
  private timer: NodeJS.Timeout | undefined;
  private round: Promise<void> | undefined;
  private readonly stopping = new AbortController();

  constructor(
    private readonly sequelize: Sequelize,
    private readonly invoices: Invoices,
    private readonly payments: Payments,
    private readonly methods: PaymentMethods,
    private readonly logger: Logger,
    private readonly options: AutoTopUpWorkerOptions,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.runOnce(), this.options.pollMs).unref();
  }

  /** Stops polling; a charge in flight is abandoned (its outcome unknown, retried by any replica under the same key). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.stopping.abort();
    await this.round;
  }

  /** One round (or the one already running). */
  runOnce(): Promise<void> {
    if (this.round) return this.round;
    this.round = this.work()
      .catch((err: unknown) => this.logger.warn("auto top-up round failed", { error: messageOf(err) }))
      .finally(() => (this.round = undefined));
    return this.round;
  }

  private async work(): Promise<void> {
    if (this.stopping.signal.aborted) return;
    await this.resumeAtMonthStart();
    await this.reconcilePaid();
    const due = await claimDue(this.sequelize, BATCH, Math.max(1_000, 2 * this.options.chargeTimeoutMs));
    await Promise.all(
      due.map((a) =>
        this.carryOut(a).catch((err: unknown) => this.logger.warn("auto top-up attempt failed to progress", { account_id: a.account_id, auto_top_up_id: a.id, error: messageOf(err) })),
      ),
    );
  }

  /** Settings a declined charge switched off before this calendar month (UTC) come back on; a new month fixes no other reason. */
  private async resumeAtMonthStart(): Promise<void> {
    for (const accountId of await declinedBeforeThisMonth(this.sequelize, BATCH)) {
      await inTransaction(this.sequelize, async (t) => {
        await lockAccountWatch(this.sequelize, t, accountId);
        if (await resumeDeclinedBeforeThisMonth(this.sequelize, t, accountId)) await rewatch(this.sequelize, t, accountId);
      });
    }
  }

  /** Failed attempts whose invoice a provider webhook paid after all (their charge went through late) become SUCCEEDED. */
  private async reconcilePaid(): Promise<void> {
    await inTransaction(this.sequelize, async (t) => {
      for (const paid of await paidAfterFailure(this.sequelize, t, BATCH)) {
        await this.finishIn(t, paid, "succeeded", "", { paymentId: paid.payment_id ?? undefined, reference: paid.provider_reference ?? undefined });
      }
    });
  }

  private async carryOut(claimed: AttemptRow): Promise<void> {
    if (claimed.state === "pending" && claimed.attempts > MAX_TRIES) {
      // Preparing it kept failing (e.g. the database): give up rather than retry forever.
      await inTransaction(this.sequelize, async (t) => {
        const a = await lockAttempt(this.sequelize, t, claimed);
        if (a?.state === "pending") await this.finishIn(t, a, "failed", `the top-up could not be prepared in ${MAX_TRIES} tries`);
      });
      return;
    }
    const charge = claimed.state === "pending" ? await this.prepare(claimed) : await this.chargeOf(claimed);
    if (!charge) return;
    const outcome = await this.charge(charge);
    await this.settle(charge, outcome);
  }

  /** Pending -> processing with an invoice and the method to charge; or skipped / failed. */
  private async prepare(claimed: AttemptRow): Promise<Charge | undefined> {
    const plan = await inTransaction(this.sequelize, async (t) => {
      const a = await lockAttempt(this.sequelize, t, claimed);
      if (!a) return undefined;
      if (a.state !== "pending") return { already: a };
      // The account row before the settings: a failure switches them off in this transaction (auto-top-up.ts).
      const settings = await chargeSettingsIn(this.sequelize, t, a.account_id);
      if (!settings?.enabled) return void (await this.finishIn(t, a, "skipped", "auto top-up was switched off before the top-up started"));
      const pkg = await packageOf(this.sequelize, t, a.package_id);
      if (!pkg?.is_active) return void (await this.finishIn(t, a, "failed", `credit package ${a.package_id} is not for sale`));
      const price = effectivePrice(pkg.price, pkg.discount_percentage, pkg.currency);
      // This calendar month (UTC): top-ups that succeeded or are being charged.
      const month = await monthToDate(this.sequelize, t, a, pkg.currency);
      if (settings.monthly_limit > 0 && month.n >= settings.monthly_limit) {
        return void (await this.finishIn(t, a, "skipped", `monthly_limit reached: ${month.n} top-ups this month (limit ${settings.monthly_limit})`));
      }
      if (settings.monthly_amount_limit !== null && new Dec(month.spent).plus(price).gt(settings.monthly_amount_limit)) {
        const money = amountIn(pkg.currency);
        return void (await this.finishIn(
          t,
          a,
          "skipped",
          `monthly_amount_limit reached: ${formatMoney(month.spent, money)} ${pkg.currency} spent this month, ${price} more would pass ${formatMoney(settings.monthly_amount_limit, money)}`,
        ));
      }
      const method = await defaultMethodOf(this.sequelize, t, a.account_id);
      const why = unchargeable(method);
      if (why) return void (await this.finishIn(t, a, "failed", why));
      return { a, pkg, method: method! };
    });
    if (!plan) return undefined;
    if (plan.already) return plan.already.state === "processing" ? this.chargeOf(plan.already) : undefined;
    let invoiceId: string;
    try {
      const invoice = await this.invoices.purchasePackage({ accountId: plan.a.account_id, packageSlug: plan.pkg.slug, paymentMethod: plan.method.type as PaymentMethodName, idempotencyKey: `auto-top-up:${plan.a.id}` });
      invoiceId = invoice.id;
    } catch (err) {
      if (!(err instanceof BillingError)) throw err;
      await inTransaction(this.sequelize, async (t) => {
        const a = await lockAttempt(this.sequelize, t, plan.a);
        if (a?.state === "pending") await this.finishIn(t, a, "failed", `the package could not be bought: ${err.message}`);
      });
      return undefined;
    }
    const processing = await inTransaction(this.sequelize, async (t) => {
      const a = await lockAttempt(this.sequelize, t, plan.a);
      if (!a) return undefined;
      if (a.state === "pending") {
        return markProcessing(this.sequelize, t, a, {
          invoiceId,
          methodId: plan.method.id,
          customerId: plan.method.provider_customer_id,
          paymentMethodId: plan.method.provider_payment_method_id,
        });
      }
      return a.state === "processing" ? a : undefined;
    });
    return processing ? this.chargeOf(processing) : undefined;
  }

  /** The charge of a processing attempt, from what was fixed when it was prepared. */
  private async chargeOf(a: AttemptRow): Promise<Charge | undefined> {
    const details = await chargeDetailsOf(this.sequelize, a);
    const provider = details?.type ? PROVIDERS.get(details.type) : undefined;
    if (!details || !provider?.chargeOffSession || !a.provider_customer_id || !a.provider_payment_method_id) {
      await inTransaction(this.sequelize, async (t) => {
        const locked = await lockAttempt(this.sequelize, t, a);
        if (locked?.state === "processing") await this.finishIn(t, locked, "failed", "the payment method to charge is gone");
      });
      return undefined;
    }
    return {
      attempt: a,
      provider,
      invoiceId: a.invoice_id!,
      invoiceNumber: details.invoice_number,
      packageSlug: details.credit_package_slug,
      total: details.total,
      currency: details.currency,
      countryCode: details.country_code ?? "",
    };
  }

  /**
   * The provider call: outside any transaction, bounded by the charge
   * timeout. A payment an earlier answer named is read back; otherwise the
   * same request is sent under the same idempotency key.
   */
  private async charge(c: Charge): Promise<ChargeOutcome> {
    const { attempt: a, provider } = c;
    const baseUrl = this.options.apiBases[provider.name];
    if (!baseUrl) return { outcome: "failed", reason: `no API base URL is configured for ${provider.name}` };
    const secretKey = await this.methods.apiSecret(provider.name, c.countryCode);
    if (!secretKey) return { outcome: "failed", reason: `no api_secret is configured for ${provider.name.toUpperCase()} (UpsertPaymentMethodConfig)` };
    if (a.provider_reference && provider.retrieveCharge) {
      return provider.retrieveCharge({ baseUrl, secretKey, paymentId: a.provider_reference, timeoutMs: this.options.chargeTimeoutMs, signal: this.stopping.signal });
    }
    const digits = provider.minorDigits(c.currency);
    if (digits === undefined) return { outcome: "failed", reason: `${provider.name} cannot charge ${c.currency}` };
    return provider.chargeOffSession!({
      baseUrl,
      secretKey,
      amountMinor: toMinorUnits(c.total, digits),
      currency: c.currency,
      customerId: a.provider_customer_id!,
      paymentMethodId: a.provider_payment_method_id!,
      idempotencyKey: a.id,
      description: `Auto top-up: ${c.packageSlug} (invoice ${c.invoiceNumber})`,
      metadata: { invoice_id: c.invoiceId, auto_top_up_id: a.id, account_id: a.account_id },
      timeoutMs: this.options.chargeTimeoutMs,
      signal: this.stopping.signal,
    });
  }

  /** Applies the charge's outcome to the payment, the invoice and the attempt. */
  private async settle(c: Charge, outcome: ChargeOutcome): Promise<void> {
    const { provider } = c;
    const by = { actor: ACTOR, note: c.attempt.id };
    await inTransaction(this.sequelize, async (t) => {
      const a = await lockAttempt(this.sequelize, t, c.attempt);
      if (!a || a.state !== "processing") return;
      if (outcome.outcome === "succeeded") {
        const digits = provider.minorDigits(outcome.currency) ?? 2;
        const r = await this.payments.providerSucceeded(t, { invoiceId: c.invoiceId, provider: provider.name, amount: fromMinorUnits(outcome.amountMinor, digits), currency: outcome.currency, ref: outcome.payment }, by);
        const paymentId = r.paymentId ?? (await paymentOfRef(this.sequelize, t, provider.name, outcome.payment.id));
        if (r.outcome !== "settled" && r.outcome !== "already_settled") {
          // Money was taken that bought nothing: a person has to look at it (refund it, or apply it by hand).
          const why = `charged but not applied (needs manual review): ${provider.name} charged ${outcome.payment.id}, but the payment could not be applied (${r.outcome}${r.detail ? `: ${r.detail}` : ""})`;
          await this.finishIn(t, a, "failed", why, { paymentId, reference: outcome.payment.id });
          return;
        }
        await this.finishIn(t, a, "succeeded", "", { paymentId, reference: outcome.payment.id });
        return;
      }
      if (outcome.outcome === "failed") {
        let paymentId: string | undefined;
        if (outcome.payment) {
          const r = await this.payments.providerFailed(t, { invoiceId: c.invoiceId, provider: provider.name, amount: c.total, currency: c.currency, ref: outcome.payment, reason: outcome.reason }, by);
          paymentId = r.paymentId ?? (await paymentOfRef(this.sequelize, t, provider.name, outcome.payment.id));
        }
        // After a try with no known outcome, some charge may still go through: its late webhook must find the invoice PENDING.
        const earlierTryUnknown = a.attempts > 1 || a.provider_reference !== null || a.failure_reason !== "";
        if (!earlierTryUnknown) await this.voidInvoiceIn(t, a, c.invoiceId, outcome.reason);
        await this.finishIn(t, a, "failed", outcome.reason, { paymentId, reference: outcome.payment?.id });
        return;
      }
      if (this.stopping.signal.aborted) {
        // Interrupted by shutdown: not a try; any replica may take it up at once.
        await releaseTry(this.sequelize, t, a);
        return;
      }
      if (a.attempts >= MAX_TRIES) {
        // The invoice stays PENDING: a late provider webhook for this charge still settles it (reconcilePaid follows).
        await this.finishIn(t, a, "failed", `no outcome from ${provider.name} after ${a.attempts} tries: ${outcome.reason}`, { reference: outcome.payment?.id });
        return;
      }
      // Still processing: the next try (once the lease runs out) reads the named payment back, or sends the same request under the same key.
      await noteUnknownOutcome(this.sequelize, t, a, outcome.reason.slice(0, MAX_FAILURE_REASON), outcome.payment?.id);
    });
  }

  /** A declined top-up's invoice is voided (nothing will pay it). */
  private async voidInvoiceIn(t: Transaction, a: AttemptKey, invoiceId: string, reason: string): Promise<void> {
    await this.invoices.closeIn(t, invoiceId, "void", `auto top-up ${a.id} failed: ${reason}`.slice(0, MAX_FAILURE_REASON), { ifAllowed: true });
  }

  /**
   * Ends an attempt. Failed: the settings switch themselves off with the
   * reason and auto_top_up.failed is written; succeeded: auto_top_up.succeeded.
   * Events are deduplicated by the attempt id.
   */
  private async finishIn(t: Transaction, a: AttemptKey, state: "succeeded" | "failed" | "skipped", reason: string, refs: { paymentId?: string; reference?: string } = {}): Promise<void> {
    // Lock order: the account row (billing_lock_account, when switching off) before the attempt row changes.
    // A racing deduction holds the account row while its trigger checks the in-flight index, which
    // waits for a transaction replacing the in-flight attempt: the other order could deadlock.
    if (state === "failed") await pauseAutoTopUpIn(this.sequelize, t, a.account_id, reason);
    if (!(await finishAttempt(this.sequelize, t, a, state, reason.slice(0, MAX_FAILURE_REASON), refs))) return;
    const view = await attemptWithCredits(this.sequelize, t, a);
    const data = { top_up_id: a.id, package_id: view?.package_id ?? "", credits: view?.credits ?? "0", invoice_id: view?.invoice_id ?? "", payment_id: view?.payment_id ?? "", failure_reason: reason };
    if (state === "succeeded") await emitIn(this.sequelize, t, a.account_id, "auto_top_up.succeeded", data, a.id);
    if (state === "failed") await emitIn(this.sequelize, t, a.account_id, "auto_top_up.failed", data, a.id);
    this.logger.info("auto top-up finished", { account_id: a.account_id, auto_top_up_id: a.id, state, reason });
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
