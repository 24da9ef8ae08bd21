/**
 * Carries out the auto top-up attempts the balance trigger starts (rules:
 * auto-top-up.ts). Every replica runs one; they share the work through the
 * database.
 *
 * One round:
 * 1. Settings a failure switched off in an earlier calendar month (UTC)
 *    come back on (the monthly limits reset).
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
 *    every try.
 * 5. Success settles through Payments.providerSucceeded, the path webhooks
 *    take: the payment SUCCEEDED, the invoice PAID, the package's credits
 *    granted as a PAID lot; then the attempt SUCCEEDED and an
 *    auto_top_up.succeeded event. If the provider's webhook settled it
 *    first, the same payment is found and nothing is granted twice.
 *    A failure records a FAILED payment (when the provider made one), voids
 *    the invoice, fails the attempt with the reason, switches the settings
 *    off and writes auto_top_up.failed.
 *    No answer (timeout, network error, 5xx, 409, 429): the attempt stays
 *    PROCESSING with the reason, and the next try (when the lease runs out)
 *    sends the same request with the same idempotency key, which the
 *    provider answers with the first request's outcome rather than a second
 *    charge. After MAX_TRIES the attempt FAILS (settings off, event), and
 *    its invoice is left PENDING: should the charge have gone through after
 *    all, the provider's payment_intent.succeeded webhook still settles it.
 */
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { inTransaction } from "../../db/transaction.js";
import type { Logger } from "../../logger.js";
import { Dec, fromMinorUnits, toMinorUnits } from "../../money.js";
import { effectivePrice } from "../credits/packages.js";
import { BillingError } from "../errors.js";
import { emitIn } from "../events/events.js";
import type { Invoices, PaymentMethodName } from "../invoices/invoices.js";
import { transition, type InvoiceStatus } from "../invoices/state-machine.js";
import type { PaymentMethods } from "../payments/payment-methods.js";
import type { Payments } from "../payments/payments.js";
import { PROVIDERS, type ChargeOutcome, type PaymentProvider } from "../payments/providers/index.js";
import { ATTEMPT_COLUMNS, ATTEMPT_JOINS, defaultMethodIn, pauseAutoTopUpIn, unchargeable, type AttemptRow } from "./auto-top-up.js";

/** Tries (claims) of one attempt before it fails for want of an answer. */
export const MAX_TRIES = 5;
/** Attempts one replica claims per round. */
const BATCH = 10;
const ACTOR = "auto_top_up";

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
    const due = await this.claim();
    await Promise.all(
      due.map((a) =>
        this.carryOut(a).catch((err: unknown) => this.logger.warn("auto top-up attempt failed to progress", { account_id: a.account_id, auto_top_up_id: a.id, error: messageOf(err) })),
      ),
    );
  }

  /** Settings a failure switched off before this calendar month (UTC) come back on. */
  private async resumeAtMonthStart(): Promise<void> {
    await inTransaction(this.sequelize, async (t) => {
      const rows = await this.sequelize.query<{ account_id: string }>(
        `UPDATE auto_top_up_settings SET enabled = true, disabled_reason = '', disabled_at = NULL, updated_at = now()
         WHERE disabled_reason <> '' AND NOT enabled AND disabled_at < date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
         RETURNING account_id`,
        { transaction: t, type: QueryTypes.SELECT },
      );
      for (const r of rows) await this.sequelize.query(`SELECT billing_rewatch($1)`, { bind: [r.account_id], transaction: t, type: QueryTypes.SELECT });
    });
  }

  /** Claims due attempts with a lease; racing replicas skip each other's rows. */
  private async claim(): Promise<AttemptRow[]> {
    const leaseMs = Math.max(1_000, 2 * this.options.chargeTimeoutMs);
    return this.sequelize.query<AttemptRow>(
      `WITH due AS (
         SELECT account_id, id FROM auto_top_ups
         WHERE state IN ('pending', 'processing') AND (lease_until IS NULL OR lease_until < now())
         ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)
       UPDATE auto_top_ups a SET lease_until = now() + $2 * interval '1 millisecond', attempts = a.attempts + 1, updated_at = now()
       FROM due WHERE a.account_id = due.account_id AND a.id = due.id
       RETURNING a.*, NULL::text AS credits`,
      { bind: [BATCH, leaseMs], type: QueryTypes.SELECT },
    );
  }

  private async carryOut(claimed: AttemptRow): Promise<void> {
    if (claimed.state === "pending" && claimed.attempts > MAX_TRIES) {
      // Preparing it kept failing (e.g. the database): give up rather than retry forever.
      await inTransaction(this.sequelize, async (t) => {
        const a = await this.lockAttempt(t, claimed);
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
      const a = await this.lockAttempt(t, claimed);
      if (!a) return undefined;
      if (a.state !== "pending") return { already: a };
      const [settings] = await this.sequelize.query<{ enabled: boolean; monthly_limit: number; monthly_amount_limit: string | null }>(
        `SELECT enabled, monthly_limit, monthly_amount_limit FROM auto_top_up_settings WHERE account_id = $1 FOR UPDATE`,
        { bind: [a.account_id], transaction: t, type: QueryTypes.SELECT },
      );
      if (!settings?.enabled) return void (await this.finishIn(t, a, "skipped", "auto top-up was switched off before the top-up started"));
      const [pkg] = await this.sequelize.query<{ slug: string; price: string; discount_percentage: number; currency: string; is_active: boolean }>(
        `SELECT slug, price, discount_percentage, currency, is_active FROM credit_packages WHERE id = $1`,
        { bind: [a.package_id], transaction: t, type: QueryTypes.SELECT },
      );
      if (!pkg?.is_active) return void (await this.finishIn(t, a, "failed", `credit package ${a.package_id} is not for sale`));
      const price = effectivePrice(pkg.price, pkg.discount_percentage, pkg.currency);
      // This calendar month (UTC): top-ups that succeeded or are being charged.
      const [month] = await this.sequelize.query<{ n: number; spent: string }>(
        `SELECT count(*)::int AS n, COALESCE(sum(i.total) FILTER (WHERE i.currency = $3), 0)::text AS spent
         FROM auto_top_ups o LEFT JOIN invoices i ON i.account_id = o.account_id AND i.id = o.invoice_id
         WHERE o.account_id = $1 AND o.id <> $2 AND o.state IN ('succeeded', 'processing')
           AND o.created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'`,
        { bind: [a.account_id, a.id, pkg.currency], transaction: t, type: QueryTypes.SELECT },
      );
      if (settings.monthly_limit > 0 && month!.n >= settings.monthly_limit) {
        return void (await this.finishIn(t, a, "skipped", `monthly_limit reached: ${month!.n} top-ups this month (limit ${settings.monthly_limit})`));
      }
      if (settings.monthly_amount_limit !== null) {
        const total = new Dec(month!.spent).plus(price);
        if (total.gt(settings.monthly_amount_limit)) {
          return void (await this.finishIn(t, a, "skipped", `monthly_amount_limit reached: ${new Dec(month!.spent).toFixed()} ${pkg.currency} spent this month, ${price} more would pass ${new Dec(settings.monthly_amount_limit).toFixed()}`));
        }
      }
      const method = await defaultMethodIn(this.sequelize, t, a.account_id);
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
        const a = await this.lockAttempt(t, plan.a);
        if (a?.state === "pending") await this.finishIn(t, a, "failed", `the package could not be bought: ${err.message}`);
      });
      return undefined;
    }
    const processing = await inTransaction(this.sequelize, async (t) => {
      const a = await this.lockAttempt(t, plan.a);
      if (!a) return undefined;
      if (a.state === "pending") {
        const [row] = await this.sequelize.query<AttemptRow>(
          `UPDATE auto_top_ups SET state = 'processing', invoice_id = $3, payment_method_id = $4, provider_customer_id = $5, provider_payment_method_id = $6, updated_at = now()
           WHERE account_id = $1 AND id = $2 RETURNING *, NULL::text AS credits`,
          { bind: [a.account_id, a.id, invoiceId, plan.method.id, plan.method.provider_customer_id, plan.method.provider_payment_method_id], transaction: t, type: QueryTypes.SELECT },
        );
        return row;
      }
      return a.state === "processing" ? a : undefined;
    });
    return processing ? this.chargeOf(processing) : undefined;
  }

  /** The charge of a processing attempt, from what was fixed when it was prepared. */
  private async chargeOf(a: AttemptRow): Promise<Charge | undefined> {
    const [row] = await this.sequelize.query<{ invoice_number: string; credit_package_slug: string; total: string; currency: string; type: string | null; country_code: string | null }>(
      `SELECT i.invoice_number, i.credit_package_slug, i.total::text AS total, i.currency, m.type, m.country_code
       FROM invoices i LEFT JOIN account_payment_methods m ON m.account_id = i.account_id AND m.id = $3
       WHERE i.account_id = $1 AND i.id = $2`,
      { bind: [a.account_id, a.invoice_id, a.payment_method_id], type: QueryTypes.SELECT },
    );
    const provider = row?.type ? PROVIDERS.get(row.type) : undefined;
    if (!row || !provider?.chargeOffSession || !a.provider_customer_id || !a.provider_payment_method_id) {
      await inTransaction(this.sequelize, async (t) => {
        const locked = await this.lockAttempt(t, a);
        if (locked?.state === "processing") await this.finishIn(t, locked, "failed", "the payment method to charge is gone");
      });
      return undefined;
    }
    return { attempt: a, provider, invoiceId: a.invoice_id!, invoiceNumber: row.invoice_number, packageSlug: row.credit_package_slug, total: row.total, currency: row.currency, countryCode: row.country_code ?? "" };
  }

  /** The provider call: outside any transaction, bounded by the charge timeout. */
  private async charge(c: Charge): Promise<ChargeOutcome> {
    const { attempt: a, provider } = c;
    const baseUrl = this.options.apiBases[provider.name];
    if (!baseUrl) return { outcome: "failed", reason: `no API base URL is configured for ${provider.name}` };
    const secretKey = await this.methods.apiSecret(provider.name, c.countryCode);
    if (!secretKey) return { outcome: "failed", reason: `no api_secret is configured for ${provider.name.toUpperCase()} (UpsertPaymentMethodConfig)` };
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
      const a = await this.lockAttempt(t, c.attempt);
      if (!a || a.state !== "processing") return;
      if (outcome.outcome === "succeeded") {
        const digits = provider.minorDigits(outcome.currency) ?? 2;
        const r = await this.payments.providerSucceeded(t, { invoiceId: c.invoiceId, provider: provider.name, amount: fromMinorUnits(outcome.amountMinor, digits), currency: outcome.currency, ref: outcome.payment }, by);
        const paymentId = r.paymentId ?? (await this.paymentOfRef(t, provider.name, outcome.payment.id));
        if (r.outcome !== "settled" && r.outcome !== "already_settled") {
          await this.finishIn(t, a, "failed", `the provider charged ${outcome.payment.id}, but the payment could not be applied (${r.outcome}${r.detail ? `: ${r.detail}` : ""})`, { paymentId, reference: outcome.payment.id });
          return;
        }
        await this.finishIn(t, a, "succeeded", "", { paymentId, reference: outcome.payment.id });
        return;
      }
      if (outcome.outcome === "failed") {
        let paymentId: string | undefined;
        if (outcome.payment) {
          const r = await this.payments.providerFailed(t, { invoiceId: c.invoiceId, provider: provider.name, amount: c.total, currency: c.currency, ref: outcome.payment, reason: outcome.reason }, by);
          paymentId = r.paymentId ?? (await this.paymentOfRef(t, provider.name, outcome.payment.id));
        }
        await this.voidInvoiceIn(t, a, c.invoiceId, outcome.reason);
        await this.finishIn(t, a, "failed", outcome.reason, { paymentId, reference: outcome.payment?.id });
        return;
      }
      if (this.stopping.signal.aborted) {
        // Interrupted by shutdown: not a try; any replica may take it up at once.
        await this.sequelize.query(`UPDATE auto_top_ups SET attempts = greatest(attempts - 1, 0), lease_until = NULL, updated_at = now() WHERE account_id = $1 AND id = $2`, {
          bind: [a.account_id, a.id],
          transaction: t,
        });
        return;
      }
      if (a.attempts >= MAX_TRIES) {
        // The invoice stays PENDING: a late provider webhook for this charge still settles it.
        await this.finishIn(t, a, "failed", `no outcome from ${provider.name} after ${a.attempts} tries: ${outcome.reason}`);
        return;
      }
      // Still processing: the next try (once the lease runs out) sends the same request under the same key.
      await this.sequelize.query(`UPDATE auto_top_ups SET failure_reason = $3, updated_at = now() WHERE account_id = $1 AND id = $2`, {
        bind: [a.account_id, a.id, outcome.reason.slice(0, 1000)],
        transaction: t,
      });
    });
  }

  /** The attempt row locked, or undefined if it is gone. */
  private async lockAttempt(t: Transaction, a: { account_id: string; id: string }): Promise<AttemptRow | undefined> {
    const [row] = await this.sequelize.query<AttemptRow>(`SELECT *, NULL::text AS credits FROM auto_top_ups WHERE account_id = $1 AND id = $2 FOR UPDATE`, {
      bind: [a.account_id, a.id],
      transaction: t,
      type: QueryTypes.SELECT,
    });
    return row;
  }

  private async paymentOfRef(t: Transaction, provider: string, reference: string): Promise<string | undefined> {
    const [row] = await this.sequelize.query<{ payment_id: string }>(`SELECT payment_id FROM provider_payment_refs WHERE provider = $1 AND provider_payment_id = $2`, {
      bind: [provider, reference],
      transaction: t,
      type: QueryTypes.SELECT,
    });
    return row?.payment_id;
  }

  /** A declined top-up's invoice is voided (nothing will pay it). */
  private async voidInvoiceIn(t: Transaction, a: AttemptRow, invoiceId: string, reason: string): Promise<void> {
    const invoice = await this.invoices.lock(t, invoiceId);
    if (invoice.status !== "pending") return;
    const now = new Date();
    await invoice.update(
      { status: transition(invoice.status as InvoiceStatus, "void"), metadata: { ...invoice.metadata, void_reason: `auto top-up ${a.id} failed: ${reason}`.slice(0, 1000), void_at: now.toISOString() }, updated_at: now },
      { transaction: t },
    );
  }

  /**
   * Ends an attempt. Failed: the settings switch themselves off with the
   * reason and auto_top_up.failed is written; succeeded: auto_top_up.succeeded.
   * Events are deduplicated by the attempt id.
   */
  private async finishIn(
    t: Transaction,
    a: AttemptRow,
    state: "succeeded" | "failed" | "skipped",
    reason: string,
    refs: { paymentId?: string; reference?: string } = {},
  ): Promise<void> {
    // Lock order: the account row (billing_rewatch, when switching off) before the attempt row changes.
    // A racing deduction holds the account row while its trigger checks the in-flight index, which
    // waits for a transaction replacing the in-flight attempt: the other order could deadlock.
    if (state === "failed") await pauseAutoTopUpIn(this.sequelize, t, a.account_id, reason);
    const [row] = await this.sequelize.query<AttemptRow>(
      `UPDATE auto_top_ups a SET state = $3, failure_reason = $4, payment_id = COALESCE($5, a.payment_id), provider_reference = COALESCE($6, a.provider_reference),
         lease_until = NULL, completed_at = now(), updated_at = now()
       WHERE a.account_id = $1 AND a.id = $2 RETURNING a.id`,
      { bind: [a.account_id, a.id, state, reason.slice(0, 1000), refs.paymentId ?? null, refs.reference ?? null], transaction: t, type: QueryTypes.SELECT },
    );
    if (!row) return;
    const [view] = await this.sequelize.query<AttemptRow>(`SELECT ${ATTEMPT_COLUMNS} FROM auto_top_ups a ${ATTEMPT_JOINS} WHERE a.account_id = $1 AND a.id = $2`, {
      bind: [a.account_id, a.id],
      transaction: t,
      type: QueryTypes.SELECT,
    });
    const data = { top_up_id: a.id, package_id: a.package_id, credits: view?.credits ?? "0", invoice_id: view?.invoice_id ?? "", payment_id: view?.payment_id ?? "", failure_reason: reason };
    if (state === "succeeded") await emitIn(this.sequelize, t, a.account_id, "auto_top_up.succeeded", data, a.id);
    if (state === "failed") await emitIn(this.sequelize, t, a.account_id, "auto_top_up.failed", data, a.id);
    this.logger.info("auto top-up finished", { account_id: a.account_id, auto_top_up_id: a.id, state, reason });
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
