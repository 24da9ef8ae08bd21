/**
 * Stripe (POST /webhooks/stripe).
 *
 * - Signature: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, v1 =
 *   HMAC-SHA256(secret, "<t>.<raw body>"), compared in constant time, with
 *   |now - t| <= 300 s.
 * - Events: payment_intent.succeeded and checkout.session.completed (paid)
 *   settle the invoice named by `metadata.invoice_id`;
 *   payment_intent.payment_failed fails it; charge.refunded carries the
 *   running total `amount_refunded`, so a partial refund applies only what is
 *   new and a replayed or older delivery applies nothing;
 *   charge.dispute.created / charge.dispute.closed open and close a dispute.
 *   Anything else is ignored (and recorded).
 * - Amounts are integers of the currency's smallest unit: none for Stripe's
 *   zero-decimal currencies (JPY, KRW, …), 3 digits for BHD/JOD/KWD/OMR/TND,
 *   2 otherwise (ISK included, which Stripe counts in hundredths).
 * - Off-session charges (auto top-up): POST {base}/v1/payment_intents,
 *   form-encoded, confirm=true and off_session=true, `Authorization: Bearer
 *   <secret key>` and an `Idempotency-Key`, so the same request sent again
 *   (after a timeout) is answered with the first one's result instead of a
 *   second charge. A PaymentIntent with status `succeeded` is a success; a
 *   402 / card_error (card_declined, authentication_required, …) and any
 *   other 4xx but 409 and 429 are failures; no answer, a 5xx, 409 or 429
 *   leave the outcome unknown. Stripe replays the first answer to a
 *   repeated idempotent request (`processing`, a 5xx), so once an answer
 *   names the PaymentIntent, its outcome is read back with
 *   GET {base}/v1/payment_intents/{id} (retrieveCharge) instead.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { minorDigits as isoMinorDigits } from "../../money.js";
import {
  SIGNATURE_TOLERANCE_SECONDS,
  currencyOf,
  envelopeOf,
  idOf,
  minorOf,
  objectOf,
  textOf,
  type ChargeLookup,
  type ChargeOutcome,
  type OffSessionCharge,
  type Parsed,
  type PaymentProvider,
  type PaymentRef,
} from "./provider.js";

const ZERO_DECIMAL = new Set(["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"]);
const TWO_DECIMAL_AT_STRIPE = new Set(["ISK"]);

export const stripe: PaymentProvider = {
  name: "stripe",

  verify(rawBody, header, secrets, now) {
    if (secrets.length === 0) return "no_webhook_secret";
    const parts = (header("stripe-signature") ?? "").split(",").map((p) => p.trim().split("="));
    const t = parts.find(([k]) => k === "t")?.[1];
    const signatures = parts.filter(([k, v]) => k === "v1" && v && /^[0-9a-f]+$/i.test(v)).map(([, v]) => Buffer.from(v!, "hex"));
    if (!t || !/^\d{1,12}$/.test(t) || signatures.length === 0) return "signature";
    const valid = secrets.some((secret) => {
      const expected = createHmac("sha256", secret).update(`${t}.`).update(rawBody).digest();
      return signatures.some((s) => s.length === expected.length && timingSafeEqual(s, expected));
    });
    if (!valid) return "signature";
    if (Math.abs(now - Number(t)) > SIGNATURE_TOLERANCE_SECONDS) return "stale";
    return "ok";
  },

  parse(rawBody): Parsed {
    const envelope = envelopeOf(rawBody, "type");
    if ("malformed" in envelope) return envelope;
    const { event, id, type } = envelope;
    const obj = objectOf(objectOf(event.data)?.object);
    const base = { id, type };
    const ignored = (why: string): Parsed => ({ event: { ...base, kind: "ignored", why } });
    switch (type) {
      case "payment_intent.succeeded":
      case "payment_intent.payment_failed":
      case "checkout.session.completed": {
        if (!obj) return { malformed: "data.object is missing" };
        const invoiceId = idOf(objectOf(obj.metadata)?.invoice_id);
        if (!invoiceId) return ignored("no_invoice");
        const session = type === "checkout.session.completed";
        if (session && obj.payment_status !== "paid") return ignored("unpaid_session");
        const paymentId = idOf(session ? obj.payment_intent : obj.id);
        if (!paymentId) return { malformed: session ? "payment_intent is missing" : "data.object.id is missing" };
        const amountMinor = minorOf(session ? obj.amount_total : type === "payment_intent.succeeded" ? (obj.amount_received ?? obj.amount) : obj.amount);
        const currency = currencyOf(obj.currency);
        if (amountMinor === undefined || !currency) return { malformed: "the amount or currency is missing or not an integer / code" };
        const payment: PaymentRef = { id: paymentId };
        const charge = idOf(obj.latest_charge) ?? idOf(objectOf(obj.latest_charge)?.id);
        if (charge) payment.secondaryId = charge;
        if (type === "payment_intent.payment_failed") {
          return { event: { ...base, kind: "failed", invoiceId, payment, amountMinor, currency, reason: textOf(objectOf(obj.last_payment_error)?.message) || "payment failed" } };
        }
        return { event: { ...base, kind: "succeeded", invoiceId, payment, amountMinor, currency } };
      }
      case "charge.refunded": {
        if (!obj) return { malformed: "data.object is missing" };
        const paymentId = idOf(obj.payment_intent);
        if (!paymentId) return ignored("no_payment_intent");
        const refundedTotalMinor = minorOf(obj.amount_refunded);
        const currency = currencyOf(obj.currency);
        if (refundedTotalMinor === undefined || !currency) return { malformed: "amount_refunded or currency is missing" };
        return { event: { ...base, kind: "refunded", payment: { id: paymentId }, currency, refundedTotalMinor } };
      }
      case "charge.dispute.created":
      case "charge.dispute.closed": {
        if (!obj) return { malformed: "data.object is missing" };
        const paymentId = idOf(obj.payment_intent);
        if (!paymentId) return ignored("no_payment_intent");
        if (type === "charge.dispute.created") return { event: { ...base, kind: "dispute_opened", payment: { id: paymentId }, reason: textOf(obj.reason, 255) } };
        return { event: { ...base, kind: "dispute_closed", payment: { id: paymentId }, outcome: textOf(obj.status, 255) || "closed" } };
      }
      default:
        return ignored("event_type");
    }
  },

  minorDigits(currency) {
    if (ZERO_DECIMAL.has(currency)) return 0;
    if (TWO_DECIMAL_AT_STRIPE.has(currency)) return 2;
    return isoMinorDigits(currency);
  },

  chargeOffSession,
  retrieveCharge,
};

/** Creates and confirms a PaymentIntent off-session (see the header); never throws. */
async function chargeOffSession(c: OffSessionCharge): Promise<ChargeOutcome> {
  const form = new URLSearchParams({
    amount: c.amountMinor.toString(),
    currency: c.currency.toLowerCase(),
    customer: c.customerId,
    payment_method: c.paymentMethodId,
    confirm: "true",
    off_session: "true",
    description: c.description,
  });
  for (const [k, v] of Object.entries(c.metadata)) form.set(`metadata[${k}]`, v);
  return intentCall(`${c.baseUrl}/v1/payment_intents`, {
    method: "POST",
    headers: { authorization: `Bearer ${c.secretKey}`, "content-type": "application/x-www-form-urlencoded", "idempotency-key": c.idempotencyKey },
    body: form.toString(),
    timeoutMs: c.timeoutMs,
    signal: c.signal,
  });
}

/** Reads a PaymentIntent back (GET /v1/payment_intents/{id}) to learn its outcome; never throws. */
function retrieveCharge(l: ChargeLookup): Promise<ChargeOutcome> {
  return intentCall(`${l.baseUrl}/v1/payment_intents/${encodeURIComponent(l.paymentId)}`, {
    method: "GET",
    headers: { authorization: `Bearer ${l.secretKey}` },
    timeoutMs: l.timeoutMs,
    signal: l.signal,
  });
}

/** One request whose answer is a PaymentIntent (or an error naming one), as a charge outcome. */
async function intentCall(url: string, r: { method: string; headers: Record<string, string>; body?: string; timeoutMs: number; signal?: AbortSignal }): Promise<ChargeOutcome> {
  const timeout = AbortSignal.timeout(r.timeoutMs);
  const signal = r.signal ? AbortSignal.any([timeout, r.signal]) : timeout;
  let status: number;
  let text: string;
  try {
    const res = await fetch(url, { method: r.method, headers: r.headers, body: r.body, signal });
    status = res.status;
    text = await res.text();
  } catch (err) {
    if (timeout.aborted) return { outcome: "unknown", reason: `no answer from Stripe within ${r.timeoutMs} ms` };
    if (r.signal?.aborted) return { outcome: "unknown", reason: "the charge was interrupted (shutting down)" };
    const cause = (err as { cause?: { code?: unknown; message?: unknown } }).cause;
    return { outcome: "unknown", reason: `could not reach Stripe: ${textOf(cause?.code ?? cause?.message ?? (err instanceof Error ? err.message : String(err)), 200)}` };
  }
  let body: Record<string, unknown> | undefined;
  try {
    body = objectOf(JSON.parse(text));
  } catch {
    body = undefined;
  }
  if (status >= 200 && status < 300) {
    const id = idOf(body?.id);
    if (!body || !id) return { outcome: "unknown", reason: `Stripe answered ${status} without a PaymentIntent` };
    const payment: PaymentRef = { id };
    const charge = idOf(body.latest_charge) ?? idOf(objectOf(body.latest_charge)?.id);
    if (charge) payment.secondaryId = charge;
    const state = typeof body.status === "string" ? body.status : "";
    if (state === "succeeded") {
      const amountMinor = minorOf(body.amount_received ?? body.amount);
      const currency = currencyOf(body.currency);
      if (amountMinor === undefined || !currency) return { outcome: "unknown", reason: "Stripe's PaymentIntent has no amount or currency", payment };
      return { outcome: "succeeded", payment, amountMinor, currency };
    }
    // Settled later by the payment_intent.* webhook, or learnt by reading the PaymentIntent back.
    if (state === "processing") return { outcome: "unknown", reason: "the payment is processing at Stripe", payment };
    const error = textOf(objectOf(body.last_payment_error)?.message, 500);
    const code = textOf(objectOf(body.last_payment_error)?.code, 100);
    return { outcome: "failed", reason: `payment intent ${textOf(state, 50) || "not succeeded"}${code ? ` (${code})` : ""}${error ? `: ${error}` : ""}`, payment };
  }
  const error = objectOf(body?.error);
  const intent = idOf(objectOf(error?.payment_intent)?.id);
  if (status === 409 || status === 429 || status >= 500) {
    const reason = `Stripe answered ${status}${error?.message ? `: ${textOf(error.message, 300)}` : ""}`;
    return intent ? { outcome: "unknown", reason, payment: { id: intent } } : { outcome: "unknown", reason };
  }
  const codes = [textOf(error?.code, 100), textOf(error?.decline_code, 100)].filter((x) => x !== "");
  const reason = `${codes.length ? codes.join(" / ") : `HTTP ${status}`}${error?.message ? `: ${textOf(error.message, 500)}` : ""}`;
  return intent ? { outcome: "failed", reason, payment: { id: intent } } : { outcome: "failed", reason };
}

/** The Stripe-Signature header for a body (tests and the README example). */
export function signStripe(rawBody: Buffer | string, secret: string, timestamp: number): string {
  const sig = createHmac("sha256", secret).update(`${timestamp}.`).update(rawBody).digest("hex");
  return `t=${timestamp},v1=${sig}`;
}
