/**
 * The credit package catalogue (credit_packages): one-time credit bundles.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, rows } from "../sql.js";
import { assignments } from "./columns.js";

/** A credit package as stored. */
export interface CreditPackageRow {
  id: string;
  name: string;
  slug: string;
  /** BIGINT as a string. */
  credits: string;
  /** NUMERIC(12,4) as a string. */
  price: string;
  discount_percentage: number;
  currency: string;
  stripe_product_id: string | null;
  stripe_price_id: string | null;
  paypal_plan_id: string | null;
  is_active: boolean;
  is_featured: boolean;
  description: string;
  features: string[];
  sort_order: number;
  created_at: Date;
  updated_at: Date;
}

/** The columns of a package a caller sets (the rest take their defaults). */
export type PackageColumns = Partial<Omit<CreditPackageRow, "id" | "credits" | "created_at" | "updated_at"> & { credits: string }>;

const JSON_COLUMNS = ["features"];

/** Packages after the position (sort_order, price, slug) `after`, inactive ones too with `includeInactive`, at most `limit`. */
export function packagesAfter(db: Sequelize, includeInactive: boolean, after: [number, string, string] | undefined, limit: number): Promise<CreditPackageRow[]> {
  const bind: unknown[] = [includeInactive];
  const keyset = after ? `AND (sort_order, price, slug) > ($${bind.push(after[0])}, $${bind.push(after[1])}::numeric, $${bind.push(after[2])})` : "";
  return rows<CreditPackageRow>(db, `SELECT * FROM credit_packages WHERE ($1::boolean OR is_active) ${keyset} ORDER BY sort_order, price, slug LIMIT $${bind.push(limit)}`, bind);
}

/** A package by slug, locked FOR UPDATE with `lock`. */
export function packageBySlug(db: Sequelize, slug: string, t?: Transaction, lock = false): Promise<CreditPackageRow | undefined> {
  return row<CreditPackageRow>(db, `SELECT * FROM credit_packages WHERE slug = $1 ${lock ? "FOR UPDATE" : ""}`, [slug], t);
}

/** Adds a package. */
export async function insertPackage(db: Sequelize, t: Transaction, columns: PackageColumns): Promise<CreditPackageRow> {
  const entries = Object.entries(columns).filter(([, value]) => value !== undefined);
  const bind = entries.map(([column, value]) => (JSON_COLUMNS.includes(column) ? JSON.stringify(value) : value));
  const values = entries.map(([column], i) => (JSON_COLUMNS.includes(column) ? `$${i + 1}::jsonb` : `$${i + 1}`));
  return (await row<CreditPackageRow>(db, `INSERT INTO credit_packages (${entries.map(([c]) => c).join(", ")}) VALUES (${values.join(", ")}) RETURNING *`, bind, t))!;
}

/** Sets `changes` of the package `slug`, updated now. */
export async function updatePackage(db: Sequelize, t: Transaction, slug: string, changes: PackageColumns): Promise<CreditPackageRow> {
  const bind: unknown[] = [slug];
  const set = assignments(changes, bind, JSON_COLUMNS);
  return (await row<CreditPackageRow>(db, `UPDATE credit_packages SET ${set ? set + ", " : ""}updated_at = now() WHERE slug = $1 RETURNING *`, bind, t))!;
}
