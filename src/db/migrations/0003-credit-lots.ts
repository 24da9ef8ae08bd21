/**
 * Credit lots (README.md, "Credit lots"): credits come in lots with a
 * category, a burn-down priority, an optional start and expiry, and their
 * source; the balance is the sum of the lots' remaining credits.
 *
 * - credit_lots: one row per grant; `state` is active, exhausted, expired or
 *   voided (PENDING is an active lot whose effective_at is still ahead).
 * - credit_transactions: `allocations` ([{lot_id, amount}]) records which
 *   lots a debit drew from; new types EXPIRATION and VOID.
 * - payments: partial refunds (`amount_refunded`, PARTIALLY_REFUNDED).
 * - The deduction rule moves to src/db/functions/billing_debit.sql, applied
 *   by every migration run; the old batch function is dropped.
 * - Existing balances become one PAID lot per account that never expires,
 *   so nothing changes for current data.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  // One transaction that holds every balance still while they become lots.
  // Processes of the previous version must be stopped first (README,
  // "Upgrading"): they change balances without touching lots.
  await sequelize.query(`
BEGIN;
LOCK TABLE billing_accounts IN EXCLUSIVE MODE;
CREATE TABLE credit_lots (
  account_id     varchar(255) NOT NULL,
  id             uuid NOT NULL DEFAULT gen_random_uuid(),
  category       varchar(20) NOT NULL CHECK (category IN ('paid','promotional','plan_allowance','adjustment')),
  state          varchar(20) NOT NULL DEFAULT 'active' CHECK (state IN ('active','exhausted','expired','voided')),
  amount         bigint NOT NULL CHECK (amount > 0),
  remaining      bigint NOT NULL,
  priority       integer NOT NULL,
  effective_at   timestamptz,
  expires_at     timestamptz,
  payment_id     uuid,
  package_id     uuid,
  created_by     varchar(255) NOT NULL DEFAULT '',
  description    varchar(255) NOT NULL DEFAULT '',
  transaction_id bigint,
  created_at     timestamptz NOT NULL DEFAULT now(),
  closed_at      timestamptz,
  PRIMARY KEY (account_id, id),
  CONSTRAINT credit_lots_remaining CHECK (remaining >= 0 AND remaining <= amount),
  CONSTRAINT credit_lots_open_or_empty CHECK (state = 'active' OR remaining = 0),
  CONSTRAINT credit_lots_window CHECK (expires_at IS NULL OR effective_at IS NULL OR expires_at > effective_at)
);
CREATE INDEX credit_lots_id ON credit_lots (id);
CREATE INDEX credit_lots_burn ON credit_lots (account_id, priority, expires_at, created_at) WHERE state = 'active';
CREATE INDEX credit_lots_due ON credit_lots (expires_at) WHERE state = 'active' AND expires_at IS NOT NULL;
CREATE INDEX credit_lots_payment ON credit_lots (account_id, payment_id) WHERE payment_id IS NOT NULL;
CREATE INDEX credit_lots_listing ON credit_lots (account_id, created_at, id);

ALTER TABLE credit_transactions ADD COLUMN allocations jsonb NOT NULL DEFAULT '[]';
ALTER TABLE credit_transactions DROP CONSTRAINT credit_transactions_type_check;
ALTER TABLE credit_transactions ADD CONSTRAINT credit_transactions_type_check
  CHECK (type IN ('purchase','subscription','refund','deduction','adjustment','expiration','void'));

ALTER TABLE payments ADD COLUMN amount_refunded numeric(10,2) NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0);
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
  CHECK (status IN ('pending_approval','succeeded','failed','refunded','partially_refunded'));
UPDATE payments SET amount_refunded = amount WHERE status = 'refunded';

DROP FUNCTION IF EXISTS billing_deduct_batch(text, text[], text[], text[], bigint[], text[], text[], text[], text[], text[], bigint[], bigint[], text[], text[]);

-- Today's balances become one never-expiring PAID lot each.
INSERT INTO credit_lots (account_id, category, amount, remaining, priority, created_by, description, created_at)
SELECT account_id, 'paid', balance, balance, 40, 'migration', 'Balance carried over from before credit lots', now()
FROM billing_accounts WHERE balance > 0;
COMMIT;
`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
DROP FUNCTION IF EXISTS billing_debit(text, jsonb, text[]);
DROP TABLE IF EXISTS credit_lots;
ALTER TABLE credit_transactions DROP COLUMN IF EXISTS allocations;
ALTER TABLE payments DROP COLUMN IF EXISTS amount_refunded;
`);
};
