/**
 * Uniqueness that spans accounts moves out of the account-owned tables, so
 * that every account-owned table's keys lead with account_id (what a
 * distribution by account_id, e.g. Citus, needs; docs/scaling.md):
 * - invoice numbers are claimed in invoice_numbers (global, keyed by the
 *   number) in the transaction that assigns them; invoices keep them unique
 *   per account;
 * - provider payment references are claimed in provider_payment_refs
 *   (global, keyed by provider and reference), which also answers "which
 *   account's payment is this?" for provider webhooks.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
CREATE TABLE invoice_numbers (
  invoice_number varchar(50) PRIMARY KEY,
  account_id     varchar(255) NOT NULL,
  invoice_id     uuid NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now()
);
INSERT INTO invoice_numbers (invoice_number, account_id, invoice_id)
  SELECT invoice_number, account_id, id FROM invoices WHERE invoice_number IS NOT NULL;
DROP INDEX invoices_invoice_number;
CREATE UNIQUE INDEX invoices_invoice_number ON invoices (account_id, invoice_number) WHERE invoice_number IS NOT NULL;

CREATE TABLE provider_payment_refs (
  provider            varchar(20) NOT NULL,
  provider_payment_id varchar(255) NOT NULL,
  account_id          varchar(255) NOT NULL,
  payment_id          uuid NOT NULL,
  created_at          timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (provider, provider_payment_id)
);
INSERT INTO provider_payment_refs (provider, provider_payment_id, account_id, payment_id)
  SELECT provider, provider_payment_id, account_id, id FROM payments WHERE provider_payment_id IS NOT NULL;
DROP INDEX payments_provider_payment;
CREATE UNIQUE INDEX payments_provider_payment ON payments (account_id, provider, provider_payment_id) WHERE provider_payment_id IS NOT NULL;
`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
DROP INDEX payments_provider_payment;
CREATE UNIQUE INDEX payments_provider_payment ON payments (provider, provider_payment_id) WHERE provider_payment_id IS NOT NULL;
DROP TABLE provider_payment_refs;
DROP INDEX invoices_invoice_number;
CREATE UNIQUE INDEX invoices_invoice_number ON invoices (invoice_number) WHERE invoice_number IS NOT NULL;
DROP TABLE invoice_numbers;
`);
};
