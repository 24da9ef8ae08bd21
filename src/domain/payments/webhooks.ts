/**
 * Provider callbacks (POST /webhooks/stripe, /webhooks/paypal).
 *
 * Rules:
 * - The signature is checked before anything else against the webhook
 *   secret of every config of that provider. A bad or stale signature is
 *   rejected (HTTP 400), logged, and changes nothing.
 * - Stripe: `Stripe-Signature: t=<unix>,v1=<hex>` where v1 is
 *   HMAC-SHA256(secret, "<t>.<raw body>"), compared in constant time, with
 *   |now - t| <= 300 s.
 * - PayPal: PayPal's own scheme verifies a certificate fetched from PayPal,
 *   which this service cannot reach, so callbacks are accepted only with a
 *   shared-secret signature the relay in front of us adds:
 *   `PayPal-Transmission-Sig` = base64 HMAC-SHA256(secret,
 *   "<PayPal-Transmission-Id>|<PayPal-Transmission-Time>|<sha256 hex of body>"),
 *   with the transmission time within 300 s.
 * - A verified event claims its id in webhook_events in the same transaction
 *   as its effect, so a replay (or a concurrent duplicate) changes nothing.
 *   Every callback, accepted or not, is logged there with its outcome.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { inTransaction } from "../../db/transaction.js";
import { Dec } from "../../money.js";
import { BillingError } from "../errors.js";
import type { PaymentMethods } from "./payment-methods.js";
import type { Payments } from "./payments.js";

export const SIGNATURE_TOLERANCE_SECONDS = 300;

export interface WebhookResult {
  status: number;
  body: { received: boolean; outcome: string; event_id?: string };
}

type Provider = "stripe" | "paypal";
type Handling = { outcome: string; paymentId?: string; detail?: string };

/** Verifies and applies provider callbacks. */
export class Webhooks {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly payments: Payments,
    private readonly methods: PaymentMethods,
    private readonly nowSeconds: () => number = () => Math.floor(Date.now() / 1000),
  ) {}

  /** Handles a Stripe callback with its raw body and Stripe-Signature header. */
  async stripe(rawBody: Buffer, signatureHeader: string | undefined): Promise<WebhookResult> {
    const secrets = await this.methods.webhookSecrets("stripe");
    const verdict = verifyStripe(rawBody, signatureHeader ?? "", secrets, this.nowSeconds());
    return this.handle("stripe", rawBody, verdict, (t, event) => this.applyStripe(t, event));
  }

  /** Handles a PayPal callback with its raw body and transmission headers. */
  async paypal(rawBody: Buffer, headers: { id?: string; time?: string; sig?: string }): Promise<WebhookResult> {
    const secrets = await this.methods.webhookSecrets("paypal");
    const verdict = verifyPaypal(rawBody, headers, secrets, this.nowSeconds());
    return this.handle("paypal", rawBody, verdict, (t, event) => this.applyPaypal(t, event));
  }

  private async handle(provider: Provider, rawBody: Buffer, verdict: string, apply: (t: Transaction, event: Record<string, any>) => Promise<Handling>): Promise<WebhookResult> {
    let event: Record<string, any> | undefined;
    try {
      event = JSON.parse(rawBody.toString("utf8"));
    } catch {
      event = undefined;
    }
    const eventId = typeof event?.id === "string" ? event.id.slice(0, 255) : "";
    const eventType = String(event?.type ?? event?.event_type ?? "").slice(0, 255);
    if (verdict !== "ok") {
      await this.log(undefined, { provider, eventId, eventType, valid: false, outcome: `rejected_${verdict}`, payload: event ?? null });
      return { status: 400, body: { received: false, outcome: `rejected_${verdict}` } };
    }
    if (!event || !eventId) {
      await this.log(undefined, { provider, eventId, eventType, valid: true, outcome: "rejected_malformed", detail: "body is not a JSON event with an id", payload: null });
      return { status: 400, body: { received: false, outcome: "rejected_malformed" } };
    }
    return inTransaction(this.sequelize, async (t) => {
      const [claimed] = await this.sequelize.query<{ id: string }>(
        `INSERT INTO webhook_events (provider, event_id, event_type, signature_valid, outcome, payload)
         VALUES ($1, $2, $3, true, 'processing', $4::jsonb)
         ON CONFLICT (provider, event_id) WHERE signature_valid AND outcome <> 'duplicate' DO NOTHING RETURNING id`,
        { bind: [provider, eventId, eventType, JSON.stringify(event)], transaction: t, type: QueryTypes.SELECT },
      );
      if (!claimed) {
        await this.log(t, { provider, eventId, eventType, valid: true, outcome: "duplicate", payload: null });
        return { status: 200, body: { received: true, outcome: "duplicate", event_id: eventId } };
      }
      let handling: Handling;
      try {
        // A savepoint: a refused event leaves no partial effect, but its log row stays.
        handling = await this.sequelize.transaction({ transaction: t }, (sp) => apply(sp, event!));
      } catch (err) {
        if (!(err instanceof BillingError)) throw err; // database trouble: 500, the provider retries
        handling = { outcome: "rejected", detail: err.message };
      }
      await this.sequelize.query(`UPDATE webhook_events SET outcome = $2, detail = $3, payment_id = $4 WHERE id = $1`, {
        bind: [claimed.id, handling.outcome, handling.detail ?? "", handling.paymentId ?? null],
        transaction: t,
      });
      return { status: 200, body: { received: true, outcome: handling.outcome, event_id: eventId } };
    });
  }

  private async applyStripe(t: Transaction, event: Record<string, any>): Promise<Handling> {
    const obj = event.data?.object ?? {};
    const actor = `webhook:stripe:${event.id}`;
    const invoiceId = String(obj.metadata?.invoice_id ?? "");
    const minor = (n: unknown) => (typeof n === "number" && Number.isInteger(n) && n >= 0 ? new Dec(n).dividedBy(100).toFixed(2) : "0");
    switch (event.type) {
      case "payment_intent.succeeded":
        if (!isUuid(invoiceId)) return { outcome: "ignored_no_invoice" };
        return this.payments.providerSucceeded(
          t,
          { invoiceId, method: "stripe", amount: minor(obj.amount_received ?? obj.amount), currency: String(obj.currency ?? ""), ref: { stripePaymentIntentId: String(obj.id), stripeChargeId: obj.latest_charge ? String(obj.latest_charge) : undefined } },
          actor,
        );
      case "checkout.session.completed":
        if (!isUuid(invoiceId) || !obj.payment_intent) return { outcome: "ignored_no_invoice" };
        if (obj.payment_status !== "paid") return { outcome: "ignored_unpaid_session" };
        return this.payments.providerSucceeded(t, { invoiceId, method: "stripe", amount: minor(obj.amount_total), currency: String(obj.currency ?? ""), ref: { stripePaymentIntentId: String(obj.payment_intent) } }, actor);
      case "payment_intent.payment_failed":
        if (!isUuid(invoiceId)) return { outcome: "ignored_no_invoice" };
        return this.payments.providerFailed(
          t,
          { invoiceId, method: "stripe", amount: minor(obj.amount), currency: String(obj.currency ?? ""), ref: { stripePaymentIntentId: String(obj.id) }, reason: String(obj.last_payment_error?.message ?? "payment failed").slice(0, 1000) },
          actor,
        );
      case "charge.refunded":
        if (!obj.payment_intent) return { outcome: "ignored_no_payment_intent" };
        return this.payments.providerRefunded(t, { stripePaymentIntentId: String(obj.payment_intent) }, "refunded at Stripe", actor);
      default:
        return { outcome: "ignored_event_type" };
    }
  }

  private async applyPaypal(t: Transaction, event: Record<string, any>): Promise<Handling> {
    const r = event.resource ?? {};
    const actor = `webhook:paypal:${event.id}`;
    const invoiceId = String(r.custom_id ?? r.invoice_id ?? "");
    const amount = typeof r.amount?.value === "string" && /^\d+(\.\d{1,2})?$/.test(r.amount.value) ? r.amount.value : "0";
    const currency = String(r.amount?.currency_code ?? "");
    const orderId = r.supplementary_data?.related_ids?.order_id;
    switch (event.event_type) {
      case "PAYMENT.CAPTURE.COMPLETED":
        if (!isUuid(invoiceId)) return { outcome: "ignored_no_invoice" };
        return this.payments.providerSucceeded(t, { invoiceId, method: "paypal", amount, currency, ref: { paypalCaptureId: String(r.id), paypalOrderId: orderId ? String(orderId) : undefined } }, actor);
      case "PAYMENT.CAPTURE.DENIED":
        if (!isUuid(invoiceId)) return { outcome: "ignored_no_invoice" };
        return this.payments.providerFailed(t, { invoiceId, method: "paypal", amount, currency, ref: { paypalCaptureId: String(r.id) }, reason: "capture denied at PayPal" }, actor);
      case "PAYMENT.CAPTURE.REFUNDED": {
        const up = Array.isArray(r.links) ? r.links.find((l: { rel?: string }) => l?.rel === "up") : undefined;
        const captureId = up?.href ? String(up.href).split("/").pop() : r.capture_id;
        if (!captureId) return { outcome: "ignored_no_capture" };
        return this.payments.providerRefunded(t, { paypalCaptureId: String(captureId) }, "refunded at PayPal", actor);
      }
      default:
        return { outcome: "ignored_event_type" };
    }
  }

  private async log(t: Transaction | undefined, e: { provider: Provider; eventId: string; eventType: string; valid: boolean; outcome: string; detail?: string; payload: unknown }): Promise<void> {
    await this.sequelize.query(
      `INSERT INTO webhook_events (provider, event_id, event_type, signature_valid, outcome, detail, payload) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)`,
      { bind: [e.provider, e.eventId, e.eventType, e.valid, e.outcome, e.detail ?? "", e.payload === null ? null : JSON.stringify(e.payload)], transaction: t },
    );
  }
}

/** "ok", or why a Stripe signature is refused. */
export function verifyStripe(rawBody: Buffer, header: string, secrets: string[], now: number): string {
  if (secrets.length === 0) return "no_webhook_secret";
  const parts = header.split(",").map((p) => p.trim().split("="));
  const t = parts.find(([k]) => k === "t")?.[1];
  const signatures = parts.filter(([k, v]) => k === "v1" && v).map(([, v]) => Buffer.from(v!, "hex"));
  if (!t || !/^\d+$/.test(t) || signatures.length === 0) return "signature";
  const valid = secrets.some((secret) => {
    const expected = createHmac("sha256", secret).update(`${t}.`).update(rawBody).digest();
    return signatures.some((s) => s.length === expected.length && timingSafeEqual(s, expected));
  });
  if (!valid) return "signature";
  if (Math.abs(now - Number(t)) > SIGNATURE_TOLERANCE_SECONDS) return "stale";
  return "ok";
}

/** The Stripe-Signature header for a body (used by tests and the README example). */
export function signStripe(rawBody: Buffer | string, secret: string, timestamp: number): string {
  const sig = createHmac("sha256", secret).update(`${timestamp}.`).update(rawBody).digest("hex");
  return `t=${timestamp},v1=${sig}`;
}

/** "ok", or why a PayPal signature is refused. */
export function verifyPaypal(rawBody: Buffer, h: { id?: string; time?: string; sig?: string }, secrets: string[], now: number): string {
  if (secrets.length === 0) return "no_webhook_secret";
  if (!h.id || !h.time || !h.sig) return "signature";
  const presented = Buffer.from(h.sig, "base64");
  const valid = secrets.some((secret) => {
    const expected = Buffer.from(signPaypal(rawBody, secret, h.id!, h.time!), "base64");
    return presented.length === expected.length && timingSafeEqual(presented, expected);
  });
  if (!valid) return "signature";
  const time = Date.parse(h.time);
  if (Number.isNaN(time) || Math.abs(now - Math.floor(time / 1000)) > SIGNATURE_TOLERANCE_SECONDS) return "stale";
  return "ok";
}

/** The PayPal-Transmission-Sig for a body under this service's offline scheme. */
export function signPaypal(rawBody: Buffer | string, secret: string, transmissionId: string, transmissionTime: string): string {
  const bodyHash = createHash("sha256").update(rawBody).digest("hex");
  return createHmac("sha256", secret).update(`${transmissionId}|${transmissionTime}|${bodyHash}`).digest("base64");
}

function isUuid(s: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(s);
}
