/**
 * The schema stays ready to be distributed by account_id (e.g. Citus; see
 * docs/scaling.md), by rule, read from the live schema:
 * - every account-owned table (one with an account_id column) has a primary
 *   key and unique indexes that lead with account_id;
 * - every foreign key between account-owned tables includes account_id;
 * - uniqueness across accounts lives only in the claim tables named here.
 */
import { expect } from "chai";
import { QueryTypes } from "sequelize";
import { harness } from "../harness.js";

/** Tables keyed by something global on purpose (claims across accounts); they carry account_id to point back. */
const CLAIM_TABLES = ["invoice_numbers", "provider_payment_refs"];

describe("schema ready for distribution by account_id", () => {
  const q = <T extends object>(sql: string) => harness().sequelize.query<T>(sql, { type: QueryTypes.SELECT });

  async function accountOwnedTables(): Promise<string[]> {
    const rows = await q<{ table_name: string }>(
      `SELECT c.table_name FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
       WHERE c.table_schema = 'public' AND c.column_name = 'account_id' AND t.table_type = 'BASE TABLE' ORDER BY 1`,
    );
    return rows.map((r) => r.table_name).filter((t) => !CLAIM_TABLES.includes(t));
  }

  it("finds the account-owned tables (the rule has something to check)", async () => {
    expect(await accountOwnedTables()).to.include.members(["billing_accounts", "credit_transactions", "credit_lots", "credit_usage_logs", "idempotency_keys", "invoices", "payments"]);
  });

  it("gives every account-owned table a primary key and unique indexes that lead with account_id", async () => {
    const tables = await accountOwnedTables();
    const rows = await q<{ table_name: string; index_name: string; is_primary: boolean; first_column: string }>(
      `SELECT t.relname AS table_name, i.relname AS index_name, x.indisprimary AS is_primary, a.attname AS first_column
       FROM pg_index x
       JOIN pg_class t ON t.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
       JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
       LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
       WHERE x.indisunique`,
    );
    const offending = rows.filter((r) => tables.includes(r.table_name) && r.first_column !== "account_id").map((r) => `${r.table_name}.${r.index_name}`);
    expect(offending, "unique keys of account-owned tables that do not lead with account_id").to.deep.equal([]);
    const withPrimary = new Set(rows.filter((r) => r.is_primary).map((r) => r.table_name));
    expect(tables.filter((t) => !withPrimary.has(t)), "account-owned tables without a primary key").to.deep.equal([]);
  });

  it("makes every foreign key between account-owned tables include account_id", async () => {
    const tables = await accountOwnedTables();
    const rows = await q<{ name: string; from_table: string; to_table: string; columns: string[] }>(
      `SELECT c.conname AS name, f.relname AS from_table, r.relname AS to_table,
              array(SELECT a.attname FROM unnest(c.conkey) k JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k) AS columns
       FROM pg_constraint c JOIN pg_class f ON f.oid = c.conrelid JOIN pg_class r ON r.oid = c.confrelid
       WHERE c.contype = 'f'`,
    );
    const offending = rows.filter((r) => tables.includes(r.from_table) && tables.includes(r.to_table) && !r.columns.includes("account_id")).map((r) => r.name);
    expect(offending, "foreign keys between account-owned tables without account_id").to.deep.equal([]);
  });

  it("keeps invoice numbers and provider payment references unique across accounts through their claim tables", async () => {
    const claims = await q<{ table_name: string; first_column: string }>(
      `SELECT t.relname AS table_name, a.attname AS first_column FROM pg_index x
       JOIN pg_class t ON t.oid = x.indrelid JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
       WHERE x.indisprimary AND t.relname = ANY ($1)`.replace("$1", `ARRAY['${CLAIM_TABLES.join("','")}']`),
    );
    expect(claims.map((c) => `${c.table_name}:${c.first_column}`).sort()).to.deep.equal(["invoice_numbers:invoice_number", "provider_payment_refs:provider"]);
  });
});
