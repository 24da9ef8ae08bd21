/**
 * Provider callbacks (POST /webhooks/<provider>), for any registered
 * provider (providers/index.ts); nothing here knows a provider by name.
 *
 * Rules:
 * - Every delivery is recorded in webhook_events with its raw bytes
 *   (losslessly, NUL and all) and its outcome, accepted or not.
 * - The signature is checked first, against the webhook secret of every
 *   config of that provider. A bad or stale signature is 400 and changes
 *   nothing; so is a signed delivery that is not an event (no string id, not
 *   JSON), with its reason, every time it is sent.
 * - A verified event claims (provider, event id) in the same transaction as
 *   its effect, so a replay (or a concurrent duplicate) changes nothing. An
 *   event the payment rules refuse is 200 with the outcome recorded (the
 *   provider must not retry it); database trouble is 500 (it must).
 * - Amounts arrive in the provider's minor units and are turned into the
 *   currency's decimals with the provider's own scale (money.ts).
 * - Payment history written here has actor "webhook:<provider>" and the
 *   event id as its note.
 */
import type { Sequelize, Transaction } from "sequelize";
import { recordWebhookEvent, setWebhookOutcome } from "../../db/payments/provider-webhooks.js";
import { inTransaction } from "../../db/transaction.js";
import { fromMinorUnits } from "../money.js";
import { BillingError } from "../errors.js";
import type { PaymentMethods } from "./payment-methods.js";
import type { Payments, ProviderOutcome } from "./payments.js";
import { PROVIDERS, type PaymentProvider, type ProviderEvent } from "./providers/index.js";

export interface WebhookResult {
  status: number;
  body: { received: boolean; outcome: string; event_id?: string; detail?: string };
}

/** Verifies, records and applies provider callbacks. */
export class Webhooks {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly payments: Payments,
    private readonly methods: PaymentMethods,
    private readonly nowSeconds: () => number = () => Math.floor(Date.now() / 1000),
  ) {}

  /** The names of the providers that have a webhook route. */
  providers(): string[] {
    return [...PROVIDERS.keys()];
  }

  /** Handles one delivery to /webhooks/<providerName> with its raw body and headers. */
  async receive(providerName: string, rawBody: Buffer, header: (name: string) => string | undefined): Promise<WebhookResult> {
    const provider = PROVIDERS.get(providerName);
    if (!provider) return { status: 404, body: { received: false, outcome: "unknown_provider" } };
    const verdict = provider.verify(rawBody, header, await this.methods.webhookSecrets(provider.name), this.nowSeconds());
    if (verdict !== "ok") {
      // What the delivery claims to be, for the record only: it claims nothing.
      const claimed = provider.parse(rawBody);
      const said = "event" in claimed ? { eventId: claimed.event.id, eventType: claimed.event.type } : { eventId: "", eventType: "" };
      await this.record(undefined, provider, rawBody, { ...said, valid: false, outcome: `rejected_${verdict}` });
      return { status: 400, body: { received: false, outcome: `rejected_${verdict}` } };
    }
    const parsed = provider.parse(rawBody);
    if ("malformed" in parsed) {
      await this.record(undefined, provider, rawBody, { eventId: "", eventType: "", valid: true, outcome: "rejected_malformed", detail: parsed.malformed });
      return { status: 400, body: { received: false, outcome: "rejected_malformed", detail: parsed.malformed } };
    }
    const event = parsed.event;
    return inTransaction(this.sequelize, async (t) => {
      const claimed = await this.record(t, provider, rawBody, { eventId: event.id, eventType: event.type, valid: true, outcome: "processing", claim: true });
      if (!claimed) {
        await this.record(t, provider, rawBody, { eventId: event.id, eventType: event.type, valid: true, outcome: "duplicate" });
        return { status: 200, body: { received: true, outcome: "duplicate", event_id: event.id } };
      }
      let handling: ProviderOutcome;
      try {
        // A savepoint: a refused event leaves no partial effect, but its record stays.
        handling = await this.sequelize.transaction({ transaction: t }, (sp) => this.apply(sp, provider, event));
      } catch (err) {
        if (!(err instanceof BillingError)) throw err; // database trouble: 500, the provider retries
        handling = { outcome: "rejected", detail: err.message };
      }
      await setWebhookOutcome(this.sequelize, t, claimed, { outcome: handling.outcome, detail: handling.detail ?? "", paymentId: handling.paymentId ?? null });
      return { status: 200, body: { received: true, outcome: handling.outcome, event_id: event.id } };
    });
  }

  /** What an event does to payments. */
  private async apply(t: Transaction, provider: PaymentProvider, event: ProviderEvent): Promise<ProviderOutcome> {
    const by = { actor: `webhook:${provider.name}`, note: event.id };
    switch (event.kind) {
      case "succeeded":
      case "failed": {
        const digits = provider.minorDigits(event.currency);
        if (digits === undefined) return { outcome: "rejected_unknown_currency", detail: event.currency };
        if (!isUuid(event.invoiceId)) return { outcome: "ignored_no_invoice" };
        const e = { invoiceId: event.invoiceId, provider: provider.name, amount: fromMinorUnits(event.amountMinor, digits), currency: event.currency, ref: event.payment };
        return event.kind === "succeeded" ? this.payments.providerSucceeded(t, e, by) : this.payments.providerFailed(t, { ...e, reason: event.reason ?? "payment failed" }, by);
      }
      case "refunded": {
        const digits = provider.minorDigits(event.currency);
        if (digits === undefined) return { outcome: "rejected_unknown_currency", detail: event.currency };
        const amounts: { refundedTotal?: string; refund?: string } = {};
        if (event.refundedTotalMinor !== undefined) amounts.refundedTotal = fromMinorUnits(event.refundedTotalMinor, digits);
        if (event.refundMinor !== undefined) amounts.refund = fromMinorUnits(event.refundMinor, digits);
        return this.payments.providerRefunded(t, { provider: provider.name, ref: event.payment, currency: event.currency, ...amounts }, by);
      }
      case "dispute_opened":
        return this.payments.providerDisputed(t, { provider: provider.name, ref: event.payment, open: true, detail: event.reason }, by);
      case "dispute_closed":
        return this.payments.providerDisputed(t, { provider: provider.name, ref: event.payment, open: false, detail: event.outcome }, by);
      case "ignored":
        return { outcome: `ignored_${event.why}` };
    }
  }

  /**
   * Writes one webhook_events row: the raw delivery always, its JSON as
   * jsonb when PostgreSQL can hold it (not with NUL or lone surrogates).
   * With `claim`, the row claims (provider, event id): the row id, or
   * undefined when a verified delivery of that event was already claimed.
   */
  private async record(
    t: Transaction | undefined,
    provider: PaymentProvider,
    rawBody: Buffer,
    e: { eventId: string; eventType: string; valid: boolean; outcome: string; detail?: string; claim?: boolean },
  ): Promise<string | undefined> {
    return recordWebhookEvent(
      this.sequelize,
      t,
      { provider: provider.name, eventId: e.eventId, eventType: e.eventType, signatureValid: e.valid, outcome: e.outcome, detail: e.detail ?? "", payload: storableJson(rawBody), rawBody },
      e.claim === true,
    );
  }
}

/** The delivery's JSON text if PostgreSQL's jsonb can hold it, else null (the raw bytes are kept either way). */
function storableJson(rawBody: Buffer): string | null {
  let text: string;
  try {
    const value: unknown = JSON.parse(rawBody.toString("utf8"));
    if (depthOf(value, 0) > MAX_STORED_DEPTH) return null; // PostgreSQL's jsonb parser has a stack of its own
    text = JSON.stringify(value);
  } catch {
    return null; // not JSON, or nested deeper than the stack allows
  }
  return /\\u0000|\\ud[89a-f]/i.test(text) ? null : text;
}

const MAX_STORED_DEPTH = 100;

/** How deep a JSON value nests, counting no further than MAX_STORED_DEPTH + 1. */
function depthOf(value: unknown, depth: number): number {
  if (depth > MAX_STORED_DEPTH || typeof value !== "object" || value === null) return depth;
  let deepest = depth + 1;
  for (const item of Array.isArray(value) ? value : Object.values(value)) {
    deepest = Math.max(deepest, depthOf(item, depth + 1));
    if (deepest > MAX_STORED_DEPTH) break;
  }
  return deepest;
}

function isUuid(s: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);
}
