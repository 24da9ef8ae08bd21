/**
 * Price versions (issue 17): model prices and per-operation pricing become
 * versions with an effective_from, so that a price change can be announced
 * ahead, a charge records the versions it was priced with, and a
 * reservation commits at the prices of its reservation.
 *
 * - model_price_versions: input/output per 1M tokens and per-image prices
 *   of a model; the columns leave ai_model_configs.
 * - cost_config_versions: tokens_per_credit, min_credits,
 *   price_per_credit_usd and an optional per-operation rounding mode; the
 *   columns (and previous_tokens_per_credit, now read from the versions)
 *   leave credit_cost_configs.
 * - The version in force at an instant is the one not cancelled with the
 *   latest effective_from at or before it; a unique index keeps two live
 *   versions of one record from starting at the same instant.
 * - Existing records get their versions from their history (each create or
 *   update that changed a price is a version from the change's instant; the
 *   first version starts at the record's creation, with the values before
 *   its first recorded change), and a last version if the stored values
 *   differ from what the history says.
 * - Usage logs record the versions they were priced with; reservations the
 *   cost config version and the instant whose prices their commit uses.
 *
 * Catalogue tables are global (reference) tables: no account_id.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
CREATE TABLE model_price_versions (
  id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  model_name         varchar(255) NOT NULL,
  input_cost_per_1m  numeric(10,4) CHECK (input_cost_per_1m >= 0.0001),
  output_cost_per_1m numeric(10,4) CHECK (output_cost_per_1m >= 0.0001),
  cost_per_image     numeric(10,4) CHECK (cost_per_image >= 0.0001),
  effective_from     timestamptz NOT NULL,
  backdated          boolean NOT NULL DEFAULT false,
  created_by         varchar(255) NOT NULL,
  created_at         timestamptz NOT NULL DEFAULT now(),
  cancelled_by       varchar(255),
  cancelled_at       timestamptz
);
CREATE UNIQUE INDEX model_price_versions_live ON model_price_versions (model_name, effective_from) WHERE cancelled_at IS NULL;
CREATE INDEX model_price_versions_model ON model_price_versions (model_name, effective_from, id);

-- The first version: the prices before the first recorded price change (or today's), from the model's creation.
INSERT INTO model_price_versions (model_name, input_cost_per_1m, output_cost_per_1m, cost_per_image, effective_from, created_by, created_at)
SELECT m.model_name,
       CASE WHEN h.before IS NULL THEN m.input_cost_per_1m ELSE nullif(h.before->>'input_cost_per_1m', '')::numeric END,
       CASE WHEN h.before IS NULL THEN m.output_cost_per_1m ELSE nullif(h.before->>'output_cost_per_1m', '')::numeric END,
       CASE WHEN h.before IS NULL THEN m.cost_per_image ELSE nullif(h.before->>'cost_per_image', '')::numeric END,
       m.created_at, 'migration', m.created_at
FROM ai_model_configs m
LEFT JOIN LATERAL (
  SELECT x.before FROM ai_model_config_history x
  WHERE x.model_name = m.model_name AND x.before IS NOT NULL
    AND (x.before->>'input_cost_per_1m', x.before->>'output_cost_per_1m', x.before->>'cost_per_image')
        IS DISTINCT FROM (x.after->>'input_cost_per_1m', x.after->>'output_cost_per_1m', x.after->>'cost_per_image')
  ORDER BY x.id LIMIT 1) h ON true;
-- Each recorded price change after that.
INSERT INTO model_price_versions (model_name, input_cost_per_1m, output_cost_per_1m, cost_per_image, effective_from, created_by, created_at)
SELECT x.model_name, nullif(x.after->>'input_cost_per_1m', '')::numeric, nullif(x.after->>'output_cost_per_1m', '')::numeric,
       nullif(x.after->>'cost_per_image', '')::numeric, x.created_at, x.actor, x.created_at
FROM ai_model_config_history x JOIN ai_model_configs m ON m.model_name = x.model_name
WHERE x.before IS NOT NULL AND x.after IS NOT NULL AND x.created_at > m.created_at
  AND (x.before->>'input_cost_per_1m', x.before->>'output_cost_per_1m', x.before->>'cost_per_image')
      IS DISTINCT FROM (x.after->>'input_cost_per_1m', x.after->>'output_cost_per_1m', x.after->>'cost_per_image')
ORDER BY x.id
ON CONFLICT DO NOTHING;
-- Today's stored prices, if the history does not end with them.
INSERT INTO model_price_versions (model_name, input_cost_per_1m, output_cost_per_1m, cost_per_image, effective_from, created_by)
SELECT m.model_name, m.input_cost_per_1m, m.output_cost_per_1m, m.cost_per_image, greatest(now(), v.effective_from + interval '1 millisecond'), 'migration'
FROM ai_model_configs m
JOIN LATERAL (SELECT * FROM model_price_versions v WHERE v.model_name = m.model_name ORDER BY v.effective_from DESC LIMIT 1) v ON true
WHERE (m.input_cost_per_1m, m.output_cost_per_1m, m.cost_per_image) IS DISTINCT FROM (v.input_cost_per_1m, v.output_cost_per_1m, v.cost_per_image);
ALTER TABLE ai_model_configs DROP COLUMN input_cost_per_1m, DROP COLUMN output_cost_per_1m, DROP COLUMN cost_per_image;

CREATE TABLE cost_config_versions (
  id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  operation_type       varchar(50) NOT NULL,
  tokens_per_credit    integer NOT NULL CHECK (tokens_per_credit >= 1),
  min_credits          integer NOT NULL CHECK (min_credits >= 0),
  price_per_credit_usd numeric(10,4) NOT NULL CHECK (price_per_credit_usd >= 0.0001),
  credit_rounding_mode varchar(10) CHECK (credit_rounding_mode IN ('up','down','nearest')),
  effective_from       timestamptz NOT NULL,
  backdated            boolean NOT NULL DEFAULT false,
  created_by           varchar(255) NOT NULL,
  created_at           timestamptz NOT NULL DEFAULT now(),
  cancelled_by         varchar(255),
  cancelled_at         timestamptz
);
CREATE UNIQUE INDEX cost_config_versions_live ON cost_config_versions (operation_type, effective_from) WHERE cancelled_at IS NULL;
CREATE INDEX cost_config_versions_operation ON cost_config_versions (operation_type, effective_from, id);

INSERT INTO cost_config_versions (operation_type, tokens_per_credit, min_credits, price_per_credit_usd, effective_from, created_by, created_at)
SELECT c.operation_type,
       coalesce((h.before->>'tokens_per_credit')::integer, c.tokens_per_credit),
       coalesce((h.before->>'min_credits')::integer, c.min_credits),
       coalesce((h.before->>'price_per_credit_usd')::numeric, c.price_per_credit_usd),
       c.created_at, 'migration', c.created_at
FROM credit_cost_configs c
LEFT JOIN LATERAL (
  SELECT x.before FROM credit_cost_config_history x
  WHERE x.operation_type = c.operation_type AND x.before IS NOT NULL
    AND (x.before->>'tokens_per_credit', x.before->>'min_credits', x.before->>'price_per_credit_usd')
        IS DISTINCT FROM (x.after->>'tokens_per_credit', x.after->>'min_credits', x.after->>'price_per_credit_usd')
  ORDER BY x.id LIMIT 1) h ON true;
INSERT INTO cost_config_versions (operation_type, tokens_per_credit, min_credits, price_per_credit_usd, effective_from, created_by, created_at)
SELECT x.operation_type, (x.after->>'tokens_per_credit')::integer, (x.after->>'min_credits')::integer,
       (x.after->>'price_per_credit_usd')::numeric, x.created_at, x.actor, x.created_at
FROM credit_cost_config_history x JOIN credit_cost_configs c ON c.operation_type = x.operation_type
WHERE x.before IS NOT NULL AND x.after IS NOT NULL AND x.created_at > c.created_at
  AND (x.before->>'tokens_per_credit', x.before->>'min_credits', x.before->>'price_per_credit_usd')
      IS DISTINCT FROM (x.after->>'tokens_per_credit', x.after->>'min_credits', x.after->>'price_per_credit_usd')
ORDER BY x.id
ON CONFLICT DO NOTHING;
INSERT INTO cost_config_versions (operation_type, tokens_per_credit, min_credits, price_per_credit_usd, effective_from, created_by)
SELECT c.operation_type, c.tokens_per_credit, c.min_credits, c.price_per_credit_usd, greatest(now(), v.effective_from + interval '1 millisecond'), 'migration'
FROM credit_cost_configs c
JOIN LATERAL (SELECT * FROM cost_config_versions v WHERE v.operation_type = c.operation_type ORDER BY v.effective_from DESC LIMIT 1) v ON true
WHERE (c.tokens_per_credit, c.min_credits, c.price_per_credit_usd) IS DISTINCT FROM (v.tokens_per_credit, v.min_credits, v.price_per_credit_usd);
ALTER TABLE credit_cost_configs DROP COLUMN tokens_per_credit, DROP COLUMN min_credits, DROP COLUMN price_per_credit_usd,
  DROP COLUMN previous_tokens_per_credit;

ALTER TABLE credit_usage_logs ADD COLUMN cost_config_version_id bigint, ADD COLUMN model_price_version_id bigint;
ALTER TABLE credit_reservations ADD COLUMN cost_config_version_id bigint, ADD COLUMN priced_at timestamptz;
`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
ALTER TABLE credit_reservations DROP COLUMN cost_config_version_id, DROP COLUMN priced_at;
ALTER TABLE credit_usage_logs DROP COLUMN cost_config_version_id, DROP COLUMN model_price_version_id;

ALTER TABLE credit_cost_configs
  ADD COLUMN tokens_per_credit integer NOT NULL DEFAULT 100 CHECK (tokens_per_credit >= 1),
  ADD COLUMN min_credits integer NOT NULL DEFAULT 1 CHECK (min_credits >= 0),
  ADD COLUMN price_per_credit_usd numeric(10,4) NOT NULL DEFAULT 0.0100 CHECK (price_per_credit_usd >= 0.0001),
  ADD COLUMN previous_tokens_per_credit integer;
UPDATE credit_cost_configs c SET tokens_per_credit = v.tokens_per_credit, min_credits = v.min_credits, price_per_credit_usd = v.price_per_credit_usd
FROM (SELECT DISTINCT ON (operation_type) * FROM cost_config_versions WHERE cancelled_at IS NULL AND effective_from <= now()
      ORDER BY operation_type, effective_from DESC) v
WHERE v.operation_type = c.operation_type;
DROP TABLE cost_config_versions;

ALTER TABLE ai_model_configs
  ADD COLUMN input_cost_per_1m numeric(10,4) CHECK (input_cost_per_1m >= 0.0001),
  ADD COLUMN output_cost_per_1m numeric(10,4) CHECK (output_cost_per_1m >= 0.0001),
  ADD COLUMN cost_per_image numeric(10,4) CHECK (cost_per_image >= 0.0001);
UPDATE ai_model_configs m SET input_cost_per_1m = v.input_cost_per_1m, output_cost_per_1m = v.output_cost_per_1m, cost_per_image = v.cost_per_image
FROM (SELECT DISTINCT ON (model_name) * FROM model_price_versions WHERE cancelled_at IS NULL AND effective_from <= now()
      ORDER BY model_name, effective_from DESC) v
WHERE v.model_name = m.model_name;
DROP TABLE model_price_versions;
`);
};
