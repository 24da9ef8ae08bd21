/**
 * Payment providers as data (src/domain/payments/providers/):
 * - payments keep provider references in generic columns (provider,
 *   provider_payment_id, provider_secondary_id), unique per provider,
 *   moved from the Stripe/PayPal columns without losing any;
 * - DISPUTED payments remember the state they return to;
 * - webhook_events keep every delivery's raw bytes (jsonb cannot hold NUL),
 *   and only rows that claimed an event id are unique, so signed deliveries
 *   without an id can be recorded as often as they come.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
ALTER TABLE payments ADD COLUMN provider varchar(20), ADD COLUMN provider_payment_id varchar(255),
  ADD COLUMN provider_secondary_id varchar(255), ADD COLUMN status_before_dispute varchar(20);
UPDATE payments SET provider = 'stripe', provider_payment_id = stripe_payment_intent_id, provider_secondary_id = stripe_charge_id
  WHERE stripe_payment_intent_id IS NOT NULL;
UPDATE payments SET provider = 'paypal', provider_payment_id = paypal_capture_id, provider_secondary_id = paypal_order_id
  WHERE paypal_capture_id IS NOT NULL AND provider IS NULL;
ALTER TABLE payments ADD CONSTRAINT payments_provider_ref CHECK ((provider IS NULL) = (provider_payment_id IS NULL));
CREATE UNIQUE INDEX payments_provider_payment ON payments (provider, provider_payment_id) WHERE provider_payment_id IS NOT NULL;
DROP INDEX payments_stripe_intent;
DROP INDEX payments_paypal_capture;
ALTER TABLE payments DROP COLUMN stripe_payment_intent_id, DROP COLUMN stripe_charge_id, DROP COLUMN paypal_order_id, DROP COLUMN paypal_capture_id;
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
  CHECK (status IN ('pending_approval','succeeded','failed','refunded','partially_refunded','disputed'));

ALTER TABLE webhook_events ADD COLUMN raw_body bytea, ADD COLUMN claimed boolean NOT NULL DEFAULT false;
UPDATE webhook_events SET claimed = signature_valid AND outcome <> 'duplicate' AND event_id <> '';
DROP INDEX webhook_events_claim;
CREATE UNIQUE INDEX webhook_events_claim ON webhook_events (provider, event_id) WHERE claimed;
`);
};

export const down: Migration = async () => {
  throw new Error("0005-payment-providers cannot be undone: the Stripe/PayPal columns were folded into generic ones");
};
