/**
 * InvoiceService through the API: drafts, line items and server-side totals,
 * the state machine (also under racing transitions), gapless numbering,
 * listing, package purchases, permissions.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import { PaymentMethod } from "../../gen/billing/v1/common_pb.js";
import { CreditService } from "../../gen/billing/v1/credit_service_pb.js";
import { InvoiceService, InvoiceStatus } from "../../gen/billing/v1/invoice_service_pb.js";
import { ACCOUNT_A, ACCOUNT_B, TOKENS, badFields, client, errorReason, expectError, key, newAccount } from "../harness.js";

const svc = () => client(InvoiceService, TOKENS.service);
const admin = () => client(InvoiceService, TOKENS.admin, "grpc-http2");

export async function draft(accountId: string, lines = [{ description: "Seats", quantity: 3n, unitPrice: "10.10" }]) {
  return (await svc().createInvoice({ accountId, lineItems: lines, tax: "1.25", idempotencyKey: key() })).invoice!;
}

export async function makePackage(credits = 500n, price = "20.00", discountPercentage = 10) {
  const slug = `pkg-${randomUUID().slice(0, 8)}`;
  await client(CreditService, TOKENS.admin).createCreditPackage({ creditPackage: { name: "Test pack", slug, credits, price, discountPercentage, isActive: true } });
  return slug;
}

describe("InvoiceService", () => {
  it("creates a DRAFT with totals computed by the server, and adds lines", async () => {
    const account = newAccount("inv");
    const inv = await draft(account);
    expect(inv).to.include({ status: InvoiceStatus.DRAFT, subtotal: "30.30", tax: "1.25", total: "31.55", currency: "USD", invoiceNumber: "", amountPaid: "0.00" });
    expect(inv.lineItems[0]).to.include({ description: "Seats", quantity: 3n, unitPrice: "10.10", amount: "30.30" });
    const more = await svc().addLineItem({ invoiceId: inv.id, description: "Setup", quantity: 1n, unitPrice: "0.10", amount: "0.05" });
    expect(more.invoice).to.include({ subtotal: "30.35", total: "31.60" });
    // 0.1 + 0.2 in floating point is 0.30000000000000004; here it is exact.
    const exact = await draft(account, [
      { description: "a", quantity: 1n, unitPrice: "0.10" },
      { description: "b", quantity: 1n, unitPrice: "0.20" },
    ]);
    expect(exact.subtotal).to.equal("0.30");
  });

  it("rejects bad input naming each field, writing nothing", async () => {
    const account = newAccount("inv");
    const err = await expectError(
      svc().createInvoice({
        accountId: account,
        currency: "usd",
        lineItems: [{ description: "", quantity: 0n, unitPrice: "1.005" }],
        tax: "-1.00",
        dueDate: { year: 2020, month: 1, day: 1 },
        idempotencyKey: key(),
      }),
      Code.InvalidArgument,
    );
    expect(badFields(err)).to.have.members(["currency", "line_items[0].description", "line_items[0].quantity", "line_items[0].unit_price", "tax", "due_date"]);
    expect((await svc().listInvoices({ accountId: account })).invoices).to.deep.equal([]);
  });

  it("walks the state machine and refuses every other transition", async () => {
    const account = newAccount("inv");
    const inv = await draft(account);
    await expectError(svc().markUncollectible({ invoiceId: inv.id }), Code.PermissionDenied); // admin only
    await expectError(admin().markUncollectible({ invoiceId: inv.id }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    const fin = (await svc().finalizeInvoice({ invoiceId: inv.id, billingSnapshot: { email: "ap@example.com", name: "ACME", address: "1 Main St" } })).invoice!;
    expect(fin.status).to.equal(InvoiceStatus.PENDING);
    expect(fin.invoiceNumber).to.match(/^INV-\d{6}-\d{6}$/);
    expect(fin.billingSnapshot).to.include({ email: "ap@example.com", name: "ACME" });
    await expectError(svc().finalizeInvoice({ invoiceId: inv.id }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    await expectError(svc().addLineItem({ invoiceId: inv.id, description: "late", quantity: 1n, unitPrice: "1.00" }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    const unc = (await admin().markUncollectible({ invoiceId: inv.id, reason: "customer gone" })).invoice!;
    expect(unc.status).to.equal(InvoiceStatus.UNCOLLECTIBLE);
    await expectError(svc().voidInvoice({ invoiceId: inv.id }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    const d2 = await draft(account);
    expect((await svc().voidInvoice({ invoiceId: d2.id, reason: "duplicate" })).invoice?.status).to.equal(InvoiceStatus.VOID);
    await expectError(svc().finalizeInvoice({ invoiceId: d2.id }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
  });

  it("lets exactly one of racing transitions win", async () => {
    const inv = await draft(newAccount("inv"));
    await svc().finalizeInvoice({ invoiceId: inv.id });
    const results = await Promise.allSettled([
      svc().voidInvoice({ invoiceId: inv.id }),
      admin().markUncollectible({ invoiceId: inv.id }),
      svc().voidInvoice({ invoiceId: inv.id }),
      admin().markUncollectible({ invoiceId: inv.id }),
    ]);
    expect(results.filter((r) => r.status === "fulfilled")).to.have.length(1);
    for (const r of results) if (r.status === "rejected") expect(errorReason(r.reason)).to.equal("INVALID_STATE_TRANSITION");
  });

  it("numbers finalized invoices uniquely and without gaps, also when finalized concurrently", async () => {
    const drafts = await Promise.all(Array.from({ length: 12 }, () => draft(newAccount("num"))));
    const voided = await draft(newAccount("num"));
    await svc().voidInvoice({ invoiceId: voided.id }); // voided drafts take no number
    const finalized = await Promise.all(drafts.map((d, i) => client(InvoiceService, TOKENS.service, i % 2 ? "grpc-http2" : "connect-json-http1").finalizeInvoice({ invoiceId: d.id })));
    const numbers = finalized.map((f) => Number(f.invoice!.invoiceNumber.slice(-6))).sort((a, b) => a - b);
    expect(new Set(numbers).size).to.equal(12);
    expect(numbers[11]! - numbers[0]!).to.equal(11); // consecutive
  });

  it("gets and lists invoices newest first with filters; accounts see only their own", async () => {
    const account = ACCOUNT_A;
    const a1 = await draft(account);
    const a2 = await draft(account);
    await svc().finalizeInvoice({ invoiceId: a2.id });
    const mine = await client(InvoiceService, TOKENS.accountA).listInvoices({ accountId: account, pageSize: 1 });
    expect(mine.invoices[0]!.id).to.equal(a2.id);
    const next = await client(InvoiceService, TOKENS.accountA).listInvoices({ accountId: account, pageSize: 1, pageToken: mine.nextPageToken });
    expect(next.invoices[0]!.id).to.equal(a1.id);
    const pending = await svc().listInvoices({ accountId: account, statuses: [InvoiceStatus.PENDING], pageSize: 500 });
    expect(pending.invoices.every((i) => i.status === InvoiceStatus.PENDING)).to.equal(true);
    expect((await client(InvoiceService, TOKENS.accountA).getInvoice({ invoiceId: a1.id })).invoice?.id).to.equal(a1.id);
    await expectError(client(InvoiceService, TOKENS.accountB).getInvoice({ invoiceId: a1.id }), Code.PermissionDenied);
    await expectError(client(InvoiceService, TOKENS.accountB).listInvoices({ accountId: account }), Code.PermissionDenied);
    await expectError(client(InvoiceService, TOKENS.accountB).createInvoice({ accountId: ACCOUNT_B, lineItems: [], idempotencyKey: key() }), Code.PermissionDenied);
    await expectError(svc().getInvoice({ invoiceId: randomUUID() }), Code.NotFound);
    const today = new Date();
    const d = { year: today.getUTCFullYear(), month: today.getUTCMonth() + 1, day: today.getUTCDate() };
    const dated = await svc().listInvoices({ accountId: account, startDate: d, endDate: d, pageSize: 500 });
    expect(dated.invoices.map((i) => i.id)).to.include(a1.id);
  });

  it("replays CreateInvoice retries", async () => {
    const account = newAccount("inv");
    const req = { accountId: account, lineItems: [{ description: "x", quantity: 1n, unitPrice: "1.00" }], idempotencyKey: key() };
    const [a, b] = await Promise.all([svc().createInvoice(req), svc().createInvoice(req)]);
    expect(a.invoice?.id).to.equal(b.invoice?.id);
    expect((await svc().listInvoices({ accountId: account })).invoices).to.have.length(1);
  });

  describe("PurchaseCreditPackage", () => {
    it("creates a PENDING numbered invoice for the package at its discounted price", async () => {
      const slug = await makePackage(500n, "20.00", 10);
      const res = await client(InvoiceService, TOKENS.accountA).purchaseCreditPackage({ accountId: ACCOUNT_A, packageSlug: slug, paymentMethod: PaymentMethod.BANK_TRANSFER, idempotencyKey: key() });
      expect(res.invoice).to.include({ status: InvoiceStatus.PENDING, total: "18.00", creditPackageSlug: slug, creditPackageCredits: 500n, paymentMethod: PaymentMethod.BANK_TRANSFER });
      expect(res.invoice?.invoiceNumber).to.match(/^INV-/);
    });

    it("refuses unknown and inactive packages and other accounts", async () => {
      let err = await expectError(svc().purchaseCreditPackage({ accountId: ACCOUNT_A, packageSlug: "no-such", idempotencyKey: key() }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["package_slug"]);
      const slug = await makePackage();
      await client(CreditService, TOKENS.admin).updateCreditPackage({ creditPackage: { slug, isActive: false }, updateMask: { paths: ["is_active"] } });
      await expectError(svc().purchaseCreditPackage({ accountId: ACCOUNT_A, packageSlug: slug, idempotencyKey: key() }), Code.FailedPrecondition, "PACKAGE_INACTIVE");
      await expectError(client(InvoiceService, TOKENS.accountA).purchaseCreditPackage({ accountId: ACCOUNT_B, packageSlug: slug, idempotencyKey: key() }), Code.PermissionDenied);
      err = await expectError(svc().purchaseCreditPackage({ accountId: ACCOUNT_A, packageSlug: "", idempotencyKey: "" }), Code.InvalidArgument);
      expect(badFields(err)).to.have.members(["package_slug", "idempotency_key"]);
    });
  });
});
