/**
 * Domain events (an outbox written in the changing transaction), low-balance
 * thresholds, automatic top-ups and outbound webhook delivery (issue 16).
 *
 * The triggers that write events live in src/db/functions/billing_events.sql
 * (applied after the migrations on every run); this migration makes the
 * tables they write.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
-- Events: one row per committed change; (tx, seq) is the commit order readers page by.
CREATE TABLE billing_events (
  account_id  varchar(255) NOT NULL,
  id          uuid NOT NULL DEFAULT gen_random_uuid(),
  seq         bigint GENERATED ALWAYS AS IDENTITY,
  tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
  type        varchar(50) NOT NULL,
  data        jsonb NOT NULL DEFAULT '{}',
  dedupe_key  varchar(255),
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id)
);
CREATE INDEX billing_events_order ON billing_events (tx, seq);
CREATE INDEX billing_events_account_order ON billing_events (account_id, tx, seq);
CREATE INDEX billing_events_id ON billing_events (id);
CREATE UNIQUE INDEX billing_events_dedupe ON billing_events (account_id, type, dedupe_key) WHERE dedupe_key IS NOT NULL;

-- Low-balance thresholds. billing_accounts.watch_min/watch_max bound every
-- threshold the account watches (alerts and auto top-up), so the balance
-- trigger's WHEN clause skips deductions that cannot cross one.
CREATE TABLE balance_thresholds (
  account_id varchar(255) NOT NULL,
  threshold  bigint NOT NULL CHECK (threshold > 0),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, threshold)
);
ALTER TABLE billing_accounts ADD COLUMN watch_min bigint, ADD COLUMN watch_max bigint;
-- The expiry sweep's way to holds that ran out (reservation.expired).
CREATE INDEX credit_reservations_due ON credit_reservations (expires_at) WHERE status = 'active';

-- Auto top-up settings and attempts. At most one attempt is in flight per
-- account; the balance trigger inserts it once per crossing.
CREATE TABLE auto_top_up_settings (
  account_id           varchar(255) PRIMARY KEY,
  enabled              boolean NOT NULL DEFAULT false,
  threshold            bigint NOT NULL DEFAULT 0 CHECK (threshold >= 0),
  package_id           uuid,
  monthly_limit        integer NOT NULL DEFAULT 0 CHECK (monthly_limit >= 0),
  monthly_amount_limit numeric(12,4) CHECK (monthly_amount_limit >= 0),
  disabled_reason      varchar(255) NOT NULL DEFAULT '',
  disabled_at          timestamptz,
  updated_by           varchar(255) NOT NULL DEFAULT '',
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT auto_top_up_enabled_complete CHECK (NOT enabled OR (threshold > 0 AND package_id IS NOT NULL))
);
CREATE TABLE auto_top_ups (
  account_id         varchar(255) NOT NULL,
  id                 uuid NOT NULL DEFAULT gen_random_uuid(),
  state              varchar(20) NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','processing','succeeded','failed','skipped')),
  package_id         uuid NOT NULL,
  threshold          bigint NOT NULL,
  balance_at_trigger bigint NOT NULL,
  invoice_id         uuid,
  payment_id         uuid,
  provider_reference varchar(255),
  -- The saved method charged and its provider ids, fixed when the charge is
  -- prepared: a retried charge must send the very same request.
  payment_method_id          uuid,
  provider_customer_id       varchar(255),
  provider_payment_method_id varchar(255),
  failure_reason     varchar(1000) NOT NULL DEFAULT '',
  attempts           integer NOT NULL DEFAULT 0,
  lease_until        timestamptz,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  completed_at       timestamptz,
  PRIMARY KEY (account_id, id)
);
CREATE UNIQUE INDEX auto_top_ups_one_in_flight ON auto_top_ups (account_id) WHERE state IN ('pending','processing');
CREATE INDEX auto_top_ups_due ON auto_top_ups (created_at) WHERE state IN ('pending','processing');
CREATE INDEX auto_top_ups_listing ON auto_top_ups (account_id, created_at, id);
-- Settings a failure switched off, for the worker's month-start resume.
CREATE INDEX auto_top_up_settings_paused ON auto_top_up_settings (disabled_at) WHERE disabled_reason <> '' AND NOT enabled;
-- What an off-session charge needs of a saved method: the provider's customer and payment method ids.
ALTER TABLE account_payment_methods
  ADD COLUMN provider_customer_id varchar(255) NOT NULL DEFAULT '',
  ADD COLUMN provider_payment_method_id varchar(255) NOT NULL DEFAULT '';

-- Webhook endpoints (global: registered by admins) and deliveries (one per
-- event and endpoint, owned by the event's account).
CREATE TABLE webhook_endpoints (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  url              varchar(2048) NOT NULL,
  description      varchar(255) NOT NULL DEFAULT '',
  event_types      text[] NOT NULL DEFAULT '{}',
  enabled          boolean NOT NULL DEFAULT true,
  state            varchar(20) NOT NULL DEFAULT 'healthy' CHECK (state IN ('healthy','failing')),
  secret_encrypted text NOT NULL,
  created_by       varchar(255) NOT NULL DEFAULT '',
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE webhook_deliveries (
  account_id      varchar(255) NOT NULL,
  id              uuid NOT NULL DEFAULT gen_random_uuid(),
  event_id        uuid NOT NULL,
  event_type      varchar(50) NOT NULL,
  endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
  state           varchar(20) NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','delivered','failed')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  lease_until     timestamptz,
  last_status     integer NOT NULL DEFAULT 0,
  last_error      varchar(1000) NOT NULL DEFAULT '',
  last_latency_ms integer NOT NULL DEFAULT 0,
  delivered_at    timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id),
  FOREIGN KEY (account_id, event_id) REFERENCES billing_events (account_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at, id);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at, id);
CREATE TABLE webhook_attempts (
  account_id  varchar(255) NOT NULL,
  id          bigint GENERATED ALWAYS AS IDENTITY,
  delivery_id uuid NOT NULL,
  attempt     integer NOT NULL,
  status      integer NOT NULL DEFAULT 0,
  error       varchar(1000) NOT NULL DEFAULT '',
  latency_ms  integer NOT NULL DEFAULT 0,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id),
  FOREIGN KEY (account_id, delivery_id) REFERENCES webhook_deliveries (account_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (account_id, delivery_id, id);
`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
DROP TRIGGER IF EXISTS billing_accounts_watch ON billing_accounts;
DROP TRIGGER IF EXISTS credit_transactions_events ON credit_transactions;
DROP TRIGGER IF EXISTS credit_reservations_events ON credit_reservations;
DROP TRIGGER IF EXISTS invoices_events ON invoices;
DROP TRIGGER IF EXISTS payments_events ON payments;
DROP TRIGGER IF EXISTS billing_events_fan_out ON billing_events;
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
DROP TABLE auto_top_ups;
DROP TABLE auto_top_up_settings;
ALTER TABLE account_payment_methods DROP COLUMN provider_customer_id, DROP COLUMN provider_payment_method_id;
ALTER TABLE billing_accounts DROP COLUMN watch_min, DROP COLUMN watch_max;
DROP TABLE balance_thresholds;
DROP TABLE billing_events;
`);
};
