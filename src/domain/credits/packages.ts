/**
 * The credit package catalogue (credit_packages): one-time credit
 * bundles with a price and discount. The effective price (what an invoice
 * charges) is price x (100 - discount) / 100, rounded half-up to cents.
 */
import type { Sequelize } from "sequelize";
import { insertPackage, packageBySlug, packagesAfter, updatePackage, type CreditPackageRow, type PackageColumns } from "../../db/catalogue/packages.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { ANY_AMOUNT, Dec, amountIn, formatMoney, parseMoney, requireCurrency } from "../money.js";
import { BillingError, Reason, Violations, invalidField, notFound } from "../errors.js";
import { applyMask } from "../field-mask.js";
import { pageOf, pageRequest } from "../pagination.js";
import { checkText } from "../validation.js";

export interface PackageView {
  id: string;
  name: string;
  slug: string;
  credits: bigint;
  price: string;
  discountPercentage: number;
  effectivePrice: string;
  currency: string;
  stripeProductId: string;
  stripePriceId: string;
  paypalPlanId: string;
  isActive: boolean;
  isFeatured: boolean;
  description: string;
  features: string[];
  sortOrder: number;
  createdAt: Date;
  updatedAt: Date;
}

export type PackageInput = Omit<PackageView, "id" | "effectivePrice" | "createdAt" | "updatedAt">;

const PACKAGE_FIELDS = [
  "name",
  "credits",
  "price",
  "discount_percentage",
  "currency",
  "stripe_product_id",
  "stripe_price_id",
  "paypal_plan_id",
  "is_active",
  "is_featured",
  "description",
  "features",
  "sort_order",
] as const;
type PackageField = (typeof PACKAGE_FIELDS)[number];

const SLUG_RE = /^[a-z0-9]+(?:[-_][a-z0-9]+)*$/;

/** The credit package catalogue service. */
export class CreditPackages {
  constructor(private readonly sequelize: Sequelize) {}

  /** Packages by sort order then price; inactive ones only when asked. */
  async list(includeInactive: boolean, requestedPageSize: number, pageToken: string): Promise<{ packages: PackageView[]; nextPageToken: string }> {
    const { size, after } = pageRequest({ pageSize: requestedPageSize, pageToken }, "packages", includeInactive, ["number", "string", "string"]);
    const rows = await packagesAfter(this.sequelize, includeInactive, after as [number, string, string] | undefined, size + 1);
    const views = rows.map(view);
    const page = pageOf(views, size, (p) => [p.sortOrder, p.price, p.slug], "packages", includeInactive);
    return { packages: page.items, nextPageToken: page.nextPageToken };
  }

  /** One package by slug, or NOT_FOUND. */
  async get(slug: string): Promise<PackageView> {
    if (slug === "") throw invalidField("slug", "is required");
    const row = await packageBySlug(this.sequelize, slug);
    if (!row) throw notFound("credit package", slug);
    return view(row);
  }

  /** Admin: adds a package. */
  async create(input: PackageInput, options: TransactionOptions = {}): Promise<PackageView> {
    const columns = validate(input, [...PACKAGE_FIELDS, "slug"] as (PackageField | "slug")[]);
    return inTransaction(
      this.sequelize,
      async (t) => {
        if (await packageBySlug(this.sequelize, input.slug, t)) {
          throw new BillingError("already_exists", Reason.AlreadyExists, `credit package ${JSON.stringify(input.slug)} already exists`, [], { slug: input.slug });
        }
        return view(await insertPackage(this.sequelize, t, columns));
      },
      options,
    );
  }

  /** Admin: changes the masked fields of a package (named by slug). */
  async update(input: PackageInput, paths: string[], options: TransactionOptions = {}): Promise<PackageView> {
    if (input.slug === "") throw invalidField("credit_package.slug", "is required");
    const populated = Object.fromEntries(PACKAGE_FIELDS.map((f) => [f, input[camel(f)]])) as Record<PackageField, unknown>;
    const fields = applyMask(paths, "credit_package", PACKAGE_FIELDS, populated);
    const columns = validate(input, fields);
    return inTransaction(
      this.sequelize,
      async (t) => {
        const row = await packageBySlug(this.sequelize, input.slug, t, true);
        if (!row) throw notFound("credit package", input.slug);
        checkPriceScale(columns.price ?? row.price, columns.currency ?? row.currency);
        return view(await updatePackage(this.sequelize, t, input.slug, columns));
      },
      options,
    );
  }
}

/** The price an invoice charges for a package, in the currency's minor units (rounded half-up). */
export function effectivePrice(price: string, discountPercentage: number, currency: string): string {
  return formatMoney(new Dec(price).times(100 - discountPercentage).dividedBy(100), amountIn(currency));
}

/** A price must not have more decimals than its currency has minor digits (e.g. none for JPY). */
function checkPriceScale(price: string, currency: string): void {
  const digits = amountIn(currency).scale;
  if (new Dec(price).decimalPlaces() > digits) throw invalidField("credit_package.price", `has more decimal places than ${currency} has (${digits})`);
}

function camel<F extends string>(f: F): keyof PackageInput {
  return f.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase()) as keyof PackageInput;
}

function validate(input: PackageInput, fields: readonly (PackageField | "slug")[]): PackageColumns {
  const v = new Violations();
  const out: PackageColumns = {};
  const f = (name: string) => `credit_package.${name}`;
  for (const field of fields) {
    switch (field) {
      case "slug":
        if (!SLUG_RE.test(input.slug) || input.slug.length > 255) v.add(f("slug"), "must be 1-255 lowercase letters, digits, '-' or '_'");
        else out.slug = input.slug;
        break;
      case "name":
        if (input.name === "") v.add(f("name"), "is required");
        else if (v.collect(() => checkText(input.name, f("name"))) !== undefined) out.name = input.name;
        break;
      case "credits":
        if (input.credits < 1n) v.add(f("credits"), "must be at least 1");
        else out.credits = input.credits.toString();
        break;
      case "price": {
        // Parsed at the widest scale; checkPriceScale holds it to the currency's.
        const price = v.collect(() => parseMoney(input.price, f("price"), ANY_AMOUNT));
        if (price) out.price = formatMoney(price, ANY_AMOUNT);
        break;
      }
      case "discount_percentage":
        if (!Number.isInteger(input.discountPercentage) || input.discountPercentage < 0 || input.discountPercentage > 100) v.add(f("discount_percentage"), "must be 0-100");
        else out.discount_percentage = input.discountPercentage;
        break;
      case "currency":
        if (v.collect(() => requireCurrency(input.currency || "USD", f("currency"))) !== undefined) out.currency = input.currency || "USD";
        break;
      case "stripe_product_id":
      case "stripe_price_id":
      case "paypal_plan_id": {
        const value = input[camel(field)] as string;
        if (v.collect(() => checkText(value, f(field))) !== undefined) out[field] = value || null;
        break;
      }
      case "is_active":
        out.is_active = input.isActive;
        break;
      case "is_featured":
        out.is_featured = input.isFeatured;
        break;
      case "description":
        if (v.collect(() => checkText(input.description, f("description"))) !== undefined) out.description = input.description;
        break;
      case "features":
        input.features.forEach((feature, i) => v.collect(() => checkText(feature, f(`features[${i}]`))));
        out.features = input.features;
        break;
      case "sort_order":
        out.sort_order = input.sortOrder;
        break;
    }
  }
  // A price is held to its currency's digits (USD's when the currency given is not valid).
  const currency = out.currency ?? (fields.includes("currency") ? "USD" : undefined);
  const price = out.price;
  if (price !== undefined && currency !== undefined) v.collect(() => checkPriceScale(price, currency));
  v.throwIfAny();
  return out;
}

function view(r: CreditPackageRow): PackageView {
  const price = formatMoney(r.price, amountIn(r.currency));
  return {
    id: r.id,
    name: r.name,
    slug: r.slug,
    credits: BigInt(r.credits),
    price,
    discountPercentage: r.discount_percentage,
    effectivePrice: effectivePrice(price, r.discount_percentage, r.currency),
    currency: r.currency,
    stripeProductId: r.stripe_product_id ?? "",
    stripePriceId: r.stripe_price_id ?? "",
    paypalPlanId: r.paypal_plan_id ?? "",
    isActive: r.is_active,
    isFeatured: r.is_featured,
    description: r.description,
    features: r.features ?? [],
    sortOrder: r.sort_order,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}
