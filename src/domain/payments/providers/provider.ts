/**
 * What a payment provider is to this service: one file per provider under
 * this folder implements `PaymentProvider`, and `index.ts` registers it.
 * The webhook route and the payment domain know no provider by name: a
 * provider verifies its own deliveries, turns them into provider-neutral
 * events, and says how its amounts are scaled.
 */

/** A provider-neutral account of what a delivery says happened. */
export type ProviderEvent = {
  /** The provider's event id (unique per provider; replays carry the same). */
  id: string;
  /** The provider's own event type, for the log. */
  type: string;
} & (
  | {
      kind: "succeeded" | "failed";
      /** The invoice the payment is for (our id, carried in the provider's metadata). */
      invoiceId: string;
      payment: PaymentRef;
      /** Minor units of `currency`, as the provider counts them. */
      amountMinor: bigint;
      currency: string;
      /** failed: why. */
      reason?: string;
    }
  | {
      kind: "refunded";
      payment: PaymentRef;
      currency: string;
      /** Everything refunded on the payment so far (Stripe sends the running total). */
      refundedTotalMinor?: bigint;
      /** This refund alone (PayPal sends one refund per event). */
      refundMinor?: bigint;
    }
  | { kind: "dispute_opened"; payment: PaymentRef; reason: string }
  | { kind: "dispute_closed"; payment: PaymentRef; outcome: string }
  | { kind: "ignored"; why: string }
);

/** How a provider names a payment: its payment id, and a second reference where it has one. */
export interface PaymentRef {
  /** Stripe: the payment intent; PayPal: the capture. Unique per provider. */
  id: string;
  /** Stripe: the charge; PayPal: the order. */
  secondaryId?: string;
}

/** A delivery read from the wire: the event, or why it is not one (answered 400). */
export type Parsed = { event: ProviderEvent } | { malformed: string };

/**
 * An off-session charge of a saved payment method (auto top-up): the
 * customer is not present, so nothing can ask them to authenticate.
 */
export interface OffSessionCharge {
  /** The provider API's base URL, without a trailing slash (STRIPE_API_BASE). */
  baseUrl: string;
  /** The provider's secret API key. */
  secretKey: string;
  /** Minor units of `currency`, as the provider counts them (see minorDigits). */
  amountMinor: bigint;
  currency: string;
  /** The provider's customer and payment method ids. */
  customerId: string;
  paymentMethodId: string;
  /** Sent as the provider's idempotency key: a retry with the same key and request never charges twice. */
  idempotencyKey: string;
  description: string;
  /** Carried by the provider's later webhooks (invoice_id lets a late webhook settle the invoice). */
  metadata: Record<string, string>;
  /** No answer within this long: the outcome is unknown. */
  timeoutMs: number;
  /** Aborted (e.g. the server shuts down): the outcome is unknown. */
  signal?: AbortSignal;
}

/**
 * What an off-session charge came to. `unknown` (no answer, a network error,
 * a 5xx, a rate limit, a concurrent request with the same key, a payment
 * still processing): the charge may or may not have happened. When the
 * answer named the provider's payment (`payment`), reading it back
 * (`retrieveCharge`) is the way to learn the outcome: the provider replays
 * its first answer to the same request under the same idempotency key.
 * Otherwise sending the same request again is.
 */
export type ChargeOutcome =
  | { outcome: "succeeded"; payment: PaymentRef; amountMinor: bigint; currency: string }
  | { outcome: "failed"; reason: string; payment?: PaymentRef }
  | { outcome: "unknown"; reason: string; payment?: PaymentRef };

/** Reading back a payment an off-session charge made (its id known), to learn its outcome. */
export interface ChargeLookup {
  /** The provider API's base URL, without a trailing slash. */
  baseUrl: string;
  secretKey: string;
  /** The provider's payment id (Stripe: the PaymentIntent). */
  paymentId: string;
  timeoutMs: number;
  signal?: AbortSignal;
}

/** A payment provider. */
export interface PaymentProvider {
  /** Its name: the webhook path (/webhooks/<name>) and the payment method it settles. */
  readonly name: string;
  /**
   * "ok", or why a delivery's signature is refused ("signature", "stale",
   * "no_webhook_secret"), against every configured webhook secret.
   */
  verify(rawBody: Buffer, header: (name: string) => string | undefined, secrets: string[], nowSeconds: number): string;
  /** The delivery as a provider-neutral event, or why it is malformed. */
  parse(rawBody: Buffer): Parsed;
  /** How many minor digits its amounts in `currency` have; undefined: a currency it cannot be trusted with. */
  minorDigits(currency: string): number | undefined;
  /** Charges a saved payment method off-session; providers that cannot leave it out. Never throws. */
  chargeOffSession?(charge: OffSessionCharge): Promise<ChargeOutcome>;
  /** The outcome of a payment an off-session charge made, read back from the provider. Never throws. */
  retrieveCharge?(lookup: ChargeLookup): Promise<ChargeOutcome>;
}

/** How far a signed timestamp may be from now. */
export const SIGNATURE_TOLERANCE_SECONDS = 300;

/**
 * The part every provider's delivery shares: a JSON object with a string id
 * and a type (under `typeField`). The event (its JSON), or why it is malformed.
 */
export function envelopeOf(rawBody: Buffer, typeField: string): { event: Record<string, unknown>; id: string; type: string } | { malformed: string } {
  let event: Record<string, unknown> | undefined;
  try {
    event = objectOf(JSON.parse(rawBody.toString("utf8")));
  } catch {
    return { malformed: "the body is not JSON" };
  }
  if (!event) return { malformed: "the body is not a JSON object" };
  const id = idOf(event.id);
  if (!id) return { malformed: "the event has no id (a non-empty string of at most 255 characters)" };
  const type = event[typeField];
  if (typeof type !== "string" || type === "" || type.includes("\u0000")) return { malformed: `the event has no ${typeField}` };
  return { event, id, type: type.slice(0, 255) };
}

/** A JSON object, or undefined. */
export function objectOf(value: unknown): Record<string, unknown> | undefined {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

/** A non-empty id string fit for a varchar(255) column (no NUL), or undefined. */
export function idOf(value: unknown): string | undefined {
  return typeof value === "string" && value !== "" && value.length <= 255 && !value.includes("\u0000") ? value : undefined;
}

/** Free text from a provider, fit for a text column: NUL and lone surrogates replaced, at most `max` characters. */
export function textOf(value: unknown, max = 1000): string {
  if (typeof value !== "string") return "";
  return value.replace(/\u0000|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g, "\uFFFD").slice(0, max);
}

/** A non-negative integer amount of minor units, or undefined. */
export function minorOf(value: unknown): bigint | undefined {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0 ? BigInt(value) : undefined;
}

/** An ISO-4217-shaped currency code in capitals, or undefined. */
export function currencyOf(value: unknown): string | undefined {
  return typeof value === "string" && /^[A-Za-z]{3}$/.test(value) ? value.toUpperCase() : undefined;
}
