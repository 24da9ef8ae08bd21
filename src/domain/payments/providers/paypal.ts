/**
 * PayPal (POST /webhooks/paypal).
 *
 * - Signature: PayPal's own scheme verifies a certificate fetched from
 *   PayPal, which this service cannot reach, so callbacks are accepted only
 *   with a shared-secret signature the relay in front of us adds:
 *   `PayPal-Transmission-Sig` = base64 HMAC-SHA256(secret,
 *   "<PayPal-Transmission-Id>|<PayPal-Transmission-Time>|<sha256 hex of body>"),
 *   with the transmission time within 300 s.
 * - Events: PAYMENT.CAPTURE.COMPLETED settles the invoice in `custom_id`
 *   (or `invoice_id`), PAYMENT.CAPTURE.DENIED fails it,
 *   PAYMENT.CAPTURE.REFUNDED applies one refund (its own amount) to the
 *   capture named by its "up" link, CUSTOMER.DISPUTE.CREATED/RESOLVED open
 *   and close a dispute. Anything else is ignored (and recorded).
 * - Amounts are decimal strings in major units; PayPal has no decimals for
 *   HUF, JPY and TWD, and ISO's digits otherwise.
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import { minorDigits as isoMinorDigits, toMinorUnits } from "../../money.js";
import { SIGNATURE_TOLERANCE_SECONDS, currencyOf, envelopeOf, idOf, objectOf, textOf, type Parsed, type PaymentProvider } from "./provider.js";

const NO_DECIMALS = new Set(["HUF", "JPY", "TWD"]);

export const paypal: PaymentProvider = {
  name: "paypal",

  verify(rawBody, header, secrets, now) {
    if (secrets.length === 0) return "no_webhook_secret";
    const id = header("paypal-transmission-id");
    const time = header("paypal-transmission-time");
    const sig = header("paypal-transmission-sig");
    if (!id || !time || !sig) return "signature";
    const presented = Buffer.from(sig, "base64");
    const valid = secrets.some((secret) => {
      const expected = Buffer.from(signPaypal(rawBody, secret, id, time), "base64");
      return presented.length === expected.length && timingSafeEqual(presented, expected);
    });
    if (!valid) return "signature";
    const at = Date.parse(time);
    if (Number.isNaN(at) || Math.abs(now - Math.floor(at / 1000)) > SIGNATURE_TOLERANCE_SECONDS) return "stale";
    return "ok";
  },

  parse(rawBody): Parsed {
    const envelope = envelopeOf(rawBody, "event_type");
    if ("malformed" in envelope) return envelope;
    const { event, id, type } = envelope;
    const r = objectOf(event.resource);
    const base = { id, type };
    const ignored = (why: string): Parsed => ({ event: { ...base, kind: "ignored", why } });
    if (!r) return type.startsWith("PAYMENT.CAPTURE.") || type.startsWith("CUSTOMER.DISPUTE.") ? { malformed: "resource is missing" } : ignored("event_type");
    const money = objectOf(r.amount);
    const currency = currencyOf(money?.currency_code);
    const value = typeof money?.value === "string" && /^\d{1,12}(\.\d{1,4})?$/.test(money.value) ? money.value : undefined;
    const minor = () => {
      const digits = currency === undefined ? undefined : paypalDigits(currency);
      if (value === undefined || currency === undefined || digits === undefined) return undefined;
      try {
        return toMinorUnits(value, digits);
      } catch {
        return undefined; // more decimals than the currency has
      }
    };
    // A signed event in a currency we cannot scale, or with more decimals than
    // it has, is recorded and acknowledged (200): PayPal would retry a 400 for days.
    const unscalable = (): Parsed | undefined =>
      currency !== undefined && value !== undefined && minor() === undefined ? ignored(paypalDigits(currency) === undefined ? "unknown_currency" : "amount_decimals") : undefined;
    switch (type) {
      case "PAYMENT.CAPTURE.COMPLETED":
      case "PAYMENT.CAPTURE.DENIED": {
        const invoiceId = idOf(r.custom_id) ?? idOf(r.invoice_id);
        if (!invoiceId) return ignored("no_invoice");
        const captureId = idOf(r.id);
        if (!captureId) return { malformed: "resource.id is missing" };
        const amountMinor = minor();
        if (amountMinor === undefined || !currency) return unscalable() ?? { malformed: "resource.amount is missing or not a decimal in its currency" };
        const order = idOf(objectOf(objectOf(r.supplementary_data)?.related_ids)?.order_id);
        const payment = order ? { id: captureId, secondaryId: order } : { id: captureId };
        if (type === "PAYMENT.CAPTURE.DENIED") return { event: { ...base, kind: "failed", invoiceId, payment, amountMinor, currency, reason: "capture denied at PayPal" } };
        return { event: { ...base, kind: "succeeded", invoiceId, payment, amountMinor, currency } };
      }
      case "PAYMENT.CAPTURE.REFUNDED": {
        const links = Array.isArray(r.links) ? r.links.map(objectOf) : [];
        const up = links.find((l) => l?.rel === "up");
        const captureId = idOf(typeof up?.href === "string" ? up.href.split("/").pop() : undefined) ?? idOf(r.capture_id);
        if (!captureId) return ignored("no_capture");
        const refundMinor = minor();
        if (refundMinor === undefined || !currency) return unscalable() ?? { malformed: "resource.amount is missing or not a decimal in its currency" };
        // The running total, when PayPal sends it, makes a refund also made through RefundPayment count once.
        const total = objectOf(objectOf(r.seller_payable_breakdown)?.total_refunded_amount);
        const totalValue = typeof total?.value === "string" && /^\d{1,12}(\.\d{1,4})?$/.test(total.value) && currencyOf(total.currency_code) === currency ? total.value : undefined;
        let refundedTotalMinor: bigint | undefined;
        try {
          refundedTotalMinor = totalValue === undefined ? undefined : toMinorUnits(totalValue, paypalDigits(currency)!);
        } catch {
          refundedTotalMinor = undefined;
        }
        return { event: { ...base, kind: "refunded", payment: { id: captureId }, currency, refundMinor, ...(refundedTotalMinor !== undefined ? { refundedTotalMinor } : {}) } };
      }
      case "CUSTOMER.DISPUTE.CREATED":
      case "CUSTOMER.DISPUTE.RESOLVED": {
        const transactions = Array.isArray(r.disputed_transactions) ? r.disputed_transactions.map(objectOf) : [];
        const captureId = idOf(transactions[0]?.seller_transaction_id);
        if (!captureId) return ignored("no_capture");
        if (type === "CUSTOMER.DISPUTE.CREATED") return { event: { ...base, kind: "dispute_opened", payment: { id: captureId }, reason: textOf(r.reason, 255) } };
        return { event: { ...base, kind: "dispute_closed", payment: { id: captureId }, outcome: textOf(objectOf(r.dispute_outcome)?.outcome_code, 255) || "resolved" } };
      }
      default:
        return ignored("event_type");
    }
  },

  minorDigits: paypalDigits,
};

function paypalDigits(currency: string): number | undefined {
  return NO_DECIMALS.has(currency) ? 0 : isoMinorDigits(currency);
}

/** The PayPal-Transmission-Sig for a body under this service's relay scheme (tests and the README). */
export function signPaypal(rawBody: Buffer | string, secret: string, transmissionId: string, transmissionTime: string): string {
  const bodyHash = createHash("sha256").update(rawBody).digest("hex");
  return createHmac("sha256", secret).update(`${transmissionId}|${transmissionTime}|${bodyHash}`).digest("base64");
}
