/**
 * Amounts in any ISO 4217 currency: invoice, payment and package amounts
 * become NUMERIC(12,4), so that JPY (0 minor digits), USD (2) and KWD (3)
 * are all held exactly; src/domain/money.ts (`amountIn`) holds each amount to its
 * currency's digits and to 8 digits before the point, as before.
 */
import type { Migration } from "../migrate.js";

const COLUMNS: [string, string[]][] = [
  ["invoices", ["subtotal", "tax", "total", "amount_paid"]],
  ["payments", ["amount", "amount_refunded"]],
  ["credit_packages", ["price"]],
];

export const up: Migration = async ({ context: sequelize }) => {
  for (const [table, columns] of COLUMNS) {
    await sequelize.query(`ALTER TABLE ${table} ${columns.map((c) => `ALTER COLUMN ${c} TYPE numeric(12,4)`).join(", ")}`);
  }
};

export const down: Migration = async ({ context: sequelize }) => {
  for (const [table, columns] of COLUMNS) {
    await sequelize.query(`ALTER TABLE ${table} ${columns.map((c) => `ALTER COLUMN ${c} TYPE numeric(10,2)`).join(", ")}`);
  }
};
