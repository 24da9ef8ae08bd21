/**
 * The registered payment providers, by name. A new provider is one file in
 * this folder implementing PaymentProvider, added here (and, since provider
 * names are payment methods, a PaymentMethod value in the proto and the
 * payment_method CHECK of a migration).
 */
import { paypal } from "./paypal.js";
import type { PaymentProvider } from "./provider.js";
import { stripe } from "./stripe.js";

export const PROVIDERS: ReadonlyMap<string, PaymentProvider> = new Map([stripe, paypal].map((p) => [p.name, p]));

export type { ChargeOutcome, OffSessionCharge, PaymentProvider, PaymentRef, ProviderEvent } from "./provider.js";
