/**
 * The initial schema: every model of the Django billing app this service
 * replaces, plus what the service itself needs (per-account balances,
 * reservations, idempotency records, invoice number sequences, webhook
 * events, history tables).
 *
 * Conventions: every table that belongs to an account has `account_id` first
 * in its primary key, so the schema can later be distributed by account_id.
 * Money is NUMERIC with the seed's scale; credits and tokens are BIGINT.
 * CHECK constraints hold the invariants the seed only had as validators.
 */
import type { Migration } from "../migrate.js";

const OPERATION_TYPES = [
  ["clustering", "Keyword Clustering"],
  ["idea_generation", "Content Ideas Generation"],
  ["content_generation", "Content Generation"],
  ["image_generation", "Image Generation"],
  ["image_prompt_extraction", "Image Prompt Extraction"],
  ["linking", "Internal Linking"],
  ["optimization", "Content Optimization"],
  ["reparse", "Content Reparse"],
  ["site_page_generation", "Site Page Generation"],
  ["site_structure_generation", "Site Structure Generation"],
] as const;

const PAYMENT_METHODS = "('stripe','paypal','bank_transfer','local_wallet','manual')";

export const up: Migration = async ({ context: sequelize }) => {
  const sql = `
CREATE TABLE billing_accounts (
  account_id   varchar(255) PRIMARY KEY,
  balance      bigint NOT NULL DEFAULT 0 CONSTRAINT balance_not_negative CHECK (balance >= 0),
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_transactions (
  account_id    varchar(255) NOT NULL,
  id            bigint GENERATED ALWAYS AS IDENTITY,
  type          varchar(20) NOT NULL CHECK (type IN ('purchase','subscription','refund','deduction','adjustment')),
  amount        bigint NOT NULL CHECK (amount <> 0),
  balance_after bigint NOT NULL CHECK (balance_after >= 0),
  description   varchar(255) NOT NULL DEFAULT '',
  metadata      jsonb NOT NULL DEFAULT '{}',
  payment_id    uuid,
  reference_id  varchar(255) NOT NULL DEFAULT '',
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id)
);
CREATE INDEX credit_transactions_account_type ON credit_transactions (account_id, type, id);
CREATE INDEX credit_transactions_account_created ON credit_transactions (account_id, created_at);
CREATE INDEX credit_transactions_payment ON credit_transactions (payment_id) WHERE payment_id IS NOT NULL;

CREATE TABLE credit_usage_logs (
  account_id          varchar(255) NOT NULL,
  id                  bigint GENERATED ALWAYS AS IDENTITY,
  transaction_id      bigint,
  operation_type      varchar(50) NOT NULL,
  credits_used        bigint NOT NULL CHECK (credits_used >= 0),
  cost_usd            numeric(10,4),
  model_used          varchar(255) NOT NULL DEFAULT '',
  tokens_input        bigint CHECK (tokens_input >= 0),
  tokens_output       bigint CHECK (tokens_output >= 0),
  related_object_type varchar(255) NOT NULL DEFAULT '',
  related_object_id   varchar(255) NOT NULL DEFAULT '',
  metadata            jsonb NOT NULL DEFAULT '{}',
  created_at          timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id)
);
CREATE INDEX credit_usage_logs_account_operation ON credit_usage_logs (account_id, operation_type);
CREATE INDEX credit_usage_logs_account_created ON credit_usage_logs (account_id, created_at);
CREATE INDEX credit_usage_logs_account_operation_created ON credit_usage_logs (account_id, operation_type, created_at);
CREATE INDEX credit_usage_logs_created ON credit_usage_logs (created_at);

CREATE TABLE credit_reservations (
  account_id        varchar(255) NOT NULL,
  id                uuid NOT NULL DEFAULT gen_random_uuid(),
  operation_type    varchar(50) NOT NULL,
  credits           bigint NOT NULL CHECK (credits > 0),
  status            varchar(20) NOT NULL DEFAULT 'active' CHECK (status IN ('active','committed','released','expired')),
  credits_committed bigint NOT NULL DEFAULT 0 CHECK (credits_committed >= 0),
  expires_at        timestamptz NOT NULL,
  created_at        timestamptz NOT NULL DEFAULT now(),
  settled_at        timestamptz,
  PRIMARY KEY (account_id, id)
);
CREATE INDEX credit_reservations_id ON credit_reservations (id);
CREATE INDEX credit_reservations_active ON credit_reservations (account_id, expires_at) WHERE status = 'active';

CREATE TABLE idempotency_keys (
  account_id    varchar(255) NOT NULL,
  key           varchar(255) NOT NULL,
  method        varchar(100) NOT NULL,
  request_hash  char(64) NOT NULL,
  response      jsonb NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE credit_cost_configs (
  operation_type             varchar(50) PRIMARY KEY,
  tokens_per_credit          integer NOT NULL DEFAULT 100 CHECK (tokens_per_credit >= 1),
  min_credits                integer NOT NULL DEFAULT 1 CHECK (min_credits >= 0),
  price_per_credit_usd       numeric(10,4) NOT NULL DEFAULT 0.0100 CHECK (price_per_credit_usd >= 0.0001),
  display_name               varchar(100) NOT NULL,
  description                text NOT NULL DEFAULT '',
  is_active                  boolean NOT NULL DEFAULT true,
  previous_tokens_per_credit integer,
  updated_by                 varchar(255),
  created_at                 timestamptz NOT NULL DEFAULT now(),
  updated_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_cost_config_history (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  operation_type varchar(50) NOT NULL,
  action         varchar(50) NOT NULL,
  actor          varchar(255) NOT NULL,
  before         jsonb,
  after          jsonb,
  created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_cost_config_history_operation ON credit_cost_config_history (operation_type, id);

CREATE TABLE billing_configuration (
  id                           smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
  default_tokens_per_credit    integer NOT NULL DEFAULT 100 CHECK (default_tokens_per_credit >= 1),
  default_credit_price_usd     numeric(10,4) NOT NULL DEFAULT 0.0100 CHECK (default_credit_price_usd >= 0.0001),
  enable_token_based_reporting boolean NOT NULL DEFAULT true,
  credit_rounding_mode         varchar(10) NOT NULL DEFAULT 'up' CHECK (credit_rounding_mode IN ('up','down','nearest')),
  updated_by                   varchar(255),
  updated_at                   timestamptz NOT NULL DEFAULT now()
);
INSERT INTO billing_configuration (id) VALUES (1);

CREATE TABLE plan_limit_usage (
  account_id   varchar(255) NOT NULL,
  id           bigint GENERATED ALWAYS AS IDENTITY,
  limit_type   varchar(50) NOT NULL CHECK (limit_type IN ('content_ideas','content_words','images_basic','images_premium','image_prompts')),
  limit_amount bigint NOT NULL DEFAULT 0 CHECK (limit_amount >= 0),
  amount_used  bigint NOT NULL DEFAULT 0 CHECK (amount_used >= 0),
  period_start date NOT NULL,
  period_end   date NOT NULL,
  metadata     jsonb NOT NULL DEFAULT '{}',
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id),
  CONSTRAINT plan_limit_usage_period CHECK (period_end >= period_start),
  CONSTRAINT plan_limit_usage_unique UNIQUE (account_id, limit_type, period_start)
);
CREATE INDEX plan_limit_usage_account_type ON plan_limit_usage (account_id, limit_type);
CREATE INDEX plan_limit_usage_account_period ON plan_limit_usage (account_id, period_start, period_end);
CREATE INDEX plan_limit_usage_type_period ON plan_limit_usage (limit_type, period_start);

CREATE TABLE credit_packages (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name                varchar(255) NOT NULL,
  slug                varchar(255) NOT NULL UNIQUE,
  credits             bigint NOT NULL CHECK (credits >= 1),
  price               numeric(10,2) NOT NULL CHECK (price >= 0),
  discount_percentage integer NOT NULL DEFAULT 0 CHECK (discount_percentage BETWEEN 0 AND 100),
  currency            char(3) NOT NULL DEFAULT 'USD',
  stripe_product_id   varchar(255),
  stripe_price_id     varchar(255),
  paypal_plan_id      varchar(255),
  is_active           boolean NOT NULL DEFAULT true,
  is_featured         boolean NOT NULL DEFAULT false,
  description         text NOT NULL DEFAULT '',
  features            jsonb NOT NULL DEFAULT '[]',
  sort_order          integer NOT NULL DEFAULT 0,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_packages_active_order ON credit_packages (is_active, sort_order, price);

CREATE TABLE invoices (
  account_id             varchar(255) NOT NULL,
  id                     uuid NOT NULL DEFAULT gen_random_uuid(),
  invoice_number         varchar(50),
  subscription_id        varchar(255),
  subtotal               numeric(10,2) NOT NULL DEFAULT 0,
  tax                    numeric(10,2) NOT NULL DEFAULT 0 CHECK (tax >= 0),
  total                  numeric(10,2) NOT NULL DEFAULT 0,
  amount_paid            numeric(10,2) NOT NULL DEFAULT 0,
  currency               char(3) NOT NULL DEFAULT 'USD',
  status                 varchar(20) NOT NULL DEFAULT 'draft' CHECK (status IN ('draft','pending','paid','void','uncollectible')),
  invoice_date           date NOT NULL DEFAULT CURRENT_DATE,
  due_date               date,
  paid_at                timestamptz,
  line_items             jsonb NOT NULL DEFAULT '[]',
  stripe_invoice_id      varchar(255),
  payment_method         varchar(50) CHECK (payment_method IN ${PAYMENT_METHODS}),
  notes                  text NOT NULL DEFAULT '',
  metadata               jsonb NOT NULL DEFAULT '{}',
  billing_snapshot       jsonb,
  credit_package_id      uuid REFERENCES credit_packages (id),
  credit_package_slug    varchar(255),
  credit_package_credits bigint CHECK (credit_package_credits > 0),
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id),
  CONSTRAINT invoices_number_when_finalized CHECK (status = 'draft' OR status = 'void' OR invoice_number IS NOT NULL)
);
CREATE UNIQUE INDEX invoices_invoice_number ON invoices (invoice_number) WHERE invoice_number IS NOT NULL;
CREATE INDEX invoices_id ON invoices (id);
CREATE INDEX invoices_account_status ON invoices (account_id, status);
CREATE INDEX invoices_account_date ON invoices (account_id, invoice_date);
CREATE INDEX invoices_created ON invoices (created_at, id);

-- Gapless invoice numbers: one counter row per month, incremented under its
-- row lock in the finalizing transaction, so a rollback gives the number back.
CREATE TABLE invoice_number_sequences (
  period     char(6) PRIMARY KEY,
  last_value integer NOT NULL CHECK (last_value >= 0)
);

CREATE TABLE payments (
  account_id               varchar(255) NOT NULL,
  id                       uuid NOT NULL DEFAULT gen_random_uuid(),
  invoice_id               uuid NOT NULL,
  amount                   numeric(10,2) NOT NULL CHECK (amount > 0),
  currency                 char(3) NOT NULL DEFAULT 'USD',
  status                   varchar(20) NOT NULL DEFAULT 'pending_approval' CHECK (status IN ('pending_approval','succeeded','failed','refunded')),
  payment_method           varchar(50) NOT NULL CHECK (payment_method IN ${PAYMENT_METHODS}),
  stripe_payment_intent_id varchar(255),
  stripe_charge_id         varchar(255),
  paypal_order_id          varchar(255),
  paypal_capture_id        varchar(255),
  manual_reference         varchar(255) NOT NULL DEFAULT '',
  manual_notes             text NOT NULL DEFAULT '',
  admin_notes              text NOT NULL DEFAULT '',
  approved_by              varchar(255),
  approved_at              timestamptz,
  processed_at             timestamptz,
  failed_at                timestamptz,
  refunded_at              timestamptz,
  failure_reason           text NOT NULL DEFAULT '',
  metadata                 jsonb NOT NULL DEFAULT '{}',
  credits_granted          bigint NOT NULL DEFAULT 0 CHECK (credits_granted >= 0),
  credits_revoked          bigint NOT NULL DEFAULT 0 CHECK (credits_revoked >= 0),
  credits_shortfall        bigint NOT NULL DEFAULT 0 CHECK (credits_shortfall >= 0),
  created_at               timestamptz NOT NULL DEFAULT now(),
  updated_at               timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id),
  FOREIGN KEY (account_id, invoice_id) REFERENCES invoices (account_id, id) ON DELETE CASCADE
);
CREATE INDEX payments_id ON payments (id);
CREATE INDEX payments_account_status ON payments (account_id, status);
CREATE INDEX payments_account_method ON payments (account_id, payment_method);
CREATE INDEX payments_invoice_status ON payments (invoice_id, status);
CREATE INDEX payments_created ON payments (created_at, id);
CREATE UNIQUE INDEX payments_stripe_intent ON payments (stripe_payment_intent_id) WHERE stripe_payment_intent_id IS NOT NULL;
CREATE UNIQUE INDEX payments_paypal_capture ON payments (paypal_capture_id) WHERE paypal_capture_id IS NOT NULL;

CREATE TABLE payment_history (
  account_id  varchar(255) NOT NULL,
  id          bigint GENERATED ALWAYS AS IDENTITY,
  payment_id  uuid NOT NULL,
  from_status varchar(20),
  to_status   varchar(20) NOT NULL,
  actor       varchar(255) NOT NULL,
  note        text NOT NULL DEFAULT '',
  snapshot    jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id)
);
CREATE INDEX payment_history_payment ON payment_history (payment_id, id);

CREATE TABLE payment_method_configs (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  country_code       char(2) NOT NULL,
  payment_method     varchar(50) NOT NULL CHECK (payment_method IN ${PAYMENT_METHODS}),
  is_enabled         boolean NOT NULL DEFAULT true,
  display_name       varchar(255) NOT NULL DEFAULT '',
  instructions       text NOT NULL DEFAULT '',
  bank_name          varchar(255) NOT NULL DEFAULT '',
  account_number     varchar(255) NOT NULL DEFAULT '',
  routing_number     varchar(255) NOT NULL DEFAULT '',
  swift_code         varchar(255) NOT NULL DEFAULT '',
  wallet_type        varchar(255) NOT NULL DEFAULT '',
  wallet_id          varchar(255) NOT NULL DEFAULT '',
  webhook_url        text NOT NULL DEFAULT '',
  -- AES-256-GCM ciphertexts (BILLING_SECRET_KEY); never returned by any RPC.
  webhook_secret_enc text,
  api_key_enc        text,
  api_secret_enc     text,
  sort_order         integer NOT NULL DEFAULT 0,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT payment_method_configs_unique UNIQUE (country_code, payment_method)
);

CREATE TABLE account_payment_methods (
  account_id   varchar(255) NOT NULL,
  id           uuid NOT NULL DEFAULT gen_random_uuid(),
  type         varchar(50) NOT NULL CHECK (type IN ${PAYMENT_METHODS}),
  display_name varchar(255) NOT NULL,
  is_default   boolean NOT NULL DEFAULT false,
  is_enabled   boolean NOT NULL DEFAULT true,
  is_verified  boolean NOT NULL DEFAULT false,
  country_code varchar(2) NOT NULL DEFAULT '',
  instructions text NOT NULL DEFAULT '',
  metadata     jsonb NOT NULL DEFAULT '{}',
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (account_id, id),
  CONSTRAINT account_payment_methods_display_name UNIQUE (account_id, display_name)
);
CREATE INDEX account_payment_methods_id ON account_payment_methods (id);
CREATE INDEX account_payment_methods_account_type ON account_payment_methods (account_id, type);
CREATE UNIQUE INDEX account_payment_methods_one_default ON account_payment_methods (account_id) WHERE is_default;

CREATE TABLE ai_model_configs (
  model_name                varchar(255) PRIMARY KEY,
  display_name              varchar(255) NOT NULL,
  model_type                varchar(20) NOT NULL CHECK (model_type IN ('text','image','embedding')),
  provider                  varchar(50) NOT NULL CHECK (provider IN ('openai','anthropic','runware','google')),
  input_cost_per_1m         numeric(10,4) CHECK (input_cost_per_1m >= 0.0001),
  output_cost_per_1m        numeric(10,4) CHECK (output_cost_per_1m >= 0.0001),
  context_window            integer CHECK (context_window >= 1),
  max_output_tokens         integer CHECK (max_output_tokens >= 1),
  cost_per_image            numeric(10,4) CHECK (cost_per_image >= 0.0001),
  valid_sizes               jsonb,
  supports_json_mode        boolean NOT NULL DEFAULT false,
  supports_vision           boolean NOT NULL DEFAULT false,
  supports_function_calling boolean NOT NULL DEFAULT false,
  is_active                 boolean NOT NULL DEFAULT true,
  is_default                boolean NOT NULL DEFAULT false,
  sort_order                integer NOT NULL DEFAULT 0,
  description               text NOT NULL DEFAULT '',
  release_date              date,
  deprecation_date          date,
  updated_by                varchar(255),
  created_at                timestamptz NOT NULL DEFAULT now(),
  updated_at                timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT ai_model_configs_default_is_active CHECK (NOT is_default OR is_active)
);
CREATE UNIQUE INDEX ai_model_configs_one_default ON ai_model_configs (model_type) WHERE is_default;
CREATE INDEX ai_model_configs_type_active ON ai_model_configs (model_type, is_active);
CREATE INDEX ai_model_configs_provider_active ON ai_model_configs (provider, is_active);
CREATE INDEX ai_model_configs_order ON ai_model_configs (model_type, sort_order, model_name);

CREATE TABLE ai_model_config_history (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  model_name varchar(255) NOT NULL,
  action     varchar(50) NOT NULL,
  actor      varchar(255) NOT NULL,
  before     jsonb,
  after      jsonb,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ai_model_config_history_model ON ai_model_config_history (model_name, id);

-- Every provider callback received, with its outcome. Only events whose
-- signature verified claim their event id, so a forged event can never make
-- a genuine one look like a replay.
CREATE TABLE webhook_events (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  provider        varchar(20) NOT NULL,
  event_id        varchar(255) NOT NULL DEFAULT '',
  event_type      varchar(255) NOT NULL DEFAULT '',
  signature_valid boolean NOT NULL,
  outcome         varchar(50) NOT NULL,
  detail          text NOT NULL DEFAULT '',
  payment_id      uuid,
  payload         jsonb,
  received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX webhook_events_claim ON webhook_events (provider, event_id) WHERE signature_valid AND outcome <> 'duplicate';
CREATE INDEX webhook_events_received ON webhook_events (received_at);
`;
  const seedCostConfigs = OPERATION_TYPES.map(([op, name]) => `('${op}', '${name}')`).join(",\n  ");
  await sequelize.query(sql);
  await sequelize.query(`INSERT INTO credit_cost_configs (operation_type, display_name) VALUES\n  ${seedCostConfigs};`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
DROP TABLE IF EXISTS webhook_events, ai_model_config_history, ai_model_configs, account_payment_methods,
  payment_method_configs, payment_history, payments, invoice_number_sequences, invoices, credit_packages,
  plan_limit_usage, billing_configuration, credit_cost_config_history, credit_cost_configs, idempotency_keys,
  credit_reservations, credit_usage_logs, credit_transactions, billing_accounts CASCADE;`);
};
