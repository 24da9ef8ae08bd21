/**
 * PaymentService through the API: the full purchase flow (package -> invoice
 * -> manual payment -> approval -> credits -> refund -> credits taken back),
 * rejections, refunds of spent credits, racing approvals, history, and
 * permissions.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import { PaymentMethod } from "../../gen/billing/v1/common_pb.js";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { InvoiceService, InvoiceStatus } from "../../gen/billing/v1/invoice_service_pb.js";
import { PaymentService, PaymentStatus } from "../../gen/billing/v1/payment_service_pb.js";
import { ACCOUNT_A, TOKENS, badFields, client, expectError, key, newAccount } from "../harness.js";
import { assertLedgerConsistent } from "../credits/ledger.test.js";
import { draft, makePackage } from "../invoices/invoices.test.js";

const payments = (token: string = TOKENS.admin) => client(PaymentService, token);
const credits = () => client(CreditService, TOKENS.service);

/** A PENDING package invoice for `account` and its pending manual payment. */
export async function pendingPackagePayment(account: string, packageCredits = 500n) {
  const slug = await makePackage(packageCredits, "20.00", 10);
  const invoice = (await client(InvoiceService, TOKENS.service).purchaseCreditPackage({ accountId: account, packageSlug: slug, paymentMethod: PaymentMethod.BANK_TRANSFER, idempotencyKey: key() })).invoice!;
  const payment = (
    await payments().submitManualPayment({ invoiceId: invoice.id, paymentMethod: PaymentMethod.BANK_TRANSFER, amount: invoice.total, manualReference: "WIRE-123", idempotencyKey: key() })
  ).payment!;
  return { invoice, payment, slug };
}

describe("PaymentService", () => {
  it("runs the full purchase flow: submit, approve, credits granted once, refund takes them back", async () => {
    const slug = await makePackage(500n, "20.00", 10);
    const invoice = (await client(InvoiceService, TOKENS.accountA).purchaseCreditPackage({ accountId: ACCOUNT_A, packageSlug: slug, paymentMethod: PaymentMethod.BANK_TRANSFER, idempotencyKey: key() })).invoice!;
    const before = (await credits().getBalance({ accountId: ACCOUNT_A })).balance!.balance;
    const submitted = (
      await payments(TOKENS.accountA).submitManualPayment({ invoiceId: invoice.id, paymentMethod: PaymentMethod.BANK_TRANSFER, amount: "18.00", manualReference: "WIRE-42", manualNotes: "sent Monday", idempotencyKey: key() })
    ).payment!;
    expect(submitted).to.include({ status: PaymentStatus.PENDING_APPROVAL, amount: "18.00", currency: "USD", invoiceId: invoice.id, accountId: ACCOUNT_A, manualReference: "WIRE-42" });
    expect((await credits().getBalance({ accountId: ACCOUNT_A })).balance!.balance).to.equal(before);

    const approved = (await client(PaymentService, TOKENS.opsAdmin).approvePayment({ paymentId: submitted.id, adminNotes: "matched statement" })).payment!;
    expect(approved).to.include({ status: PaymentStatus.SUCCEEDED, approvedBy: "ops-ana", creditsGranted: 500n, adminNotes: "matched statement" });
    expect(approved.approvedAt).to.not.equal(undefined);
    const paid = (await client(InvoiceService, TOKENS.accountA).getInvoice({ invoiceId: invoice.id })).invoice!;
    expect(paid).to.include({ status: InvoiceStatus.PAID, amountPaid: "18.00" });
    expect((await credits().getBalance({ accountId: ACCOUNT_A })).balance!.balance).to.equal(before + 500n);
    const purchase = (await credits().listTransactions({ accountId: ACCOUNT_A, types: [CreditTransactionType.PURCHASE], pageSize: 1 })).transactions[0]!;
    expect(purchase).to.include({ amount: 500n, paymentId: submitted.id });

    await expectError(payments().approvePayment({ paymentId: submitted.id }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");

    const refunded = (await payments().refundPayment({ paymentId: submitted.id, reason: "customer request", idempotencyKey: key() })).payment!;
    expect(refunded).to.include({ status: PaymentStatus.REFUNDED, creditsRevoked: 500n, creditsShortfall: 0n });
    expect((await credits().getBalance({ accountId: ACCOUNT_A })).balance!.balance).to.equal(before);
    const back = (await credits().listTransactions({ accountId: ACCOUNT_A, types: [CreditTransactionType.REFUND], pageSize: 1 })).transactions[0]!;
    expect(back).to.include({ amount: -500n, paymentId: submitted.id });
    await assertLedgerConsistent(ACCOUNT_A);

    const history = await payments(TOKENS.accountA).listPaymentHistory({ paymentId: submitted.id });
    expect(history.entries.map((e) => [e.fromStatus, e.toStatus])).to.deep.equal([
      [PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED],
      [PaymentStatus.PENDING_APPROVAL, PaymentStatus.SUCCEEDED],
      [PaymentStatus.UNSPECIFIED, PaymentStatus.PENDING_APPROVAL],
    ]);
    expect(history.entries.map((e) => e.actor)).to.deep.equal(["admin", "ops-ana", "account"]);
  });

  it("rejects a payment with a reason, leaving the invoice payable", async () => {
    const account = newAccount("pay");
    const { invoice, payment } = await pendingPackagePayment(account);
    await expectError(payments().rejectPayment({ paymentId: payment.id, reason: "" }), Code.InvalidArgument);
    const rejected = (await payments().rejectPayment({ paymentId: payment.id, reason: "no matching transfer" })).payment!;
    expect(rejected).to.include({ status: PaymentStatus.FAILED, failureReason: "no matching transfer" });
    expect(rejected.failedAt).to.not.equal(undefined);
    await expectError(payments().approvePayment({ paymentId: payment.id }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    const again = await payments().submitManualPayment({ invoiceId: invoice.id, paymentMethod: PaymentMethod.MANUAL, amount: invoice.total, idempotencyKey: key() });
    expect(again.payment?.status).to.equal(PaymentStatus.PENDING_APPROVAL);
    expect((await credits().getBalance({ accountId: account })).balance?.balance).to.equal(0n);
  });

  it("refuses a wrong amount, a second pending payment, provider methods and unpayable invoices", async () => {
    const account = newAccount("pay");
    const { invoice } = await pendingPackagePayment(account);
    await expectError(payments().submitManualPayment({ invoiceId: invoice.id, paymentMethod: PaymentMethod.BANK_TRANSFER, amount: invoice.total, idempotencyKey: key() }), Code.FailedPrecondition, "PAYMENT_PENDING");
    const other = await draft(account);
    await client(InvoiceService, TOKENS.service).finalizeInvoice({ invoiceId: other.id });
    await expectError(payments().submitManualPayment({ invoiceId: other.id, paymentMethod: PaymentMethod.BANK_TRANSFER, amount: "1.00", idempotencyKey: key() }), Code.FailedPrecondition, "AMOUNT_MISMATCH");
    let err = await expectError(payments().submitManualPayment({ invoiceId: other.id, paymentMethod: PaymentMethod.STRIPE, amount: "1.001", idempotencyKey: "" }), Code.InvalidArgument);
    expect(badFields(err)).to.have.members(["payment_method", "amount", "idempotency_key"]);
    const d = await draft(account);
    await expectError(payments().submitManualPayment({ invoiceId: d.id, paymentMethod: PaymentMethod.MANUAL, amount: d.total, idempotencyKey: key() }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    err = await expectError(payments().getPayment({ paymentId: "x" }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["payment_id"]);
    await expectError(payments().getPayment({ paymentId: randomUUID() }), Code.NotFound);
  });

  it("refuses to refund credits already spent unless revoke_available_only, which records the shortfall", async () => {
    const account = newAccount("pay");
    const { payment } = await pendingPackagePayment(account, 100n);
    await payments().approvePayment({ paymentId: payment.id });
    await credits().deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 70n }, idempotencyKey: key() });
    await expectError(payments().refundPayment({ paymentId: payment.id, reason: "r", idempotencyKey: key() }), Code.FailedPrecondition, "CREDITS_ALREADY_SPENT");
    expect((await payments().getPayment({ paymentId: payment.id })).payment?.status).to.equal(PaymentStatus.SUCCEEDED);
    expect((await credits().getBalance({ accountId: account })).balance?.balance).to.equal(30n);
    const req = { paymentId: payment.id, reason: "chargeback", revokeAvailableOnly: true, idempotencyKey: key() };
    const [a, b] = await Promise.all([payments().refundPayment(req), payments().refundPayment(req)]);
    expect(a.payment).to.include({ status: PaymentStatus.REFUNDED, creditsRevoked: 30n, creditsShortfall: 70n });
    expect(b.payment?.creditsRevoked).to.equal(30n);
    expect(await assertLedgerConsistent(account)).to.equal(0n);
    await expectError(payments().refundPayment({ paymentId: payment.id, reason: "again", idempotencyKey: key() }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
  });

  it("grants credits once when many approvals race", async () => {
    const account = newAccount("pay");
    const { payment } = await pendingPackagePayment(account, 250n);
    const results = await Promise.allSettled(Array.from({ length: 10 }, (_, i) => client(PaymentService, TOKENS.admin, i % 2 ? "grpc-http2" : "connect-json-http1").approvePayment({ paymentId: payment.id })));
    expect(results.filter((r) => r.status === "fulfilled")).to.have.length(1);
    expect(await assertLedgerConsistent(account)).to.equal(250n);
  });

  it("keeps approvals, refunds and other accounts' payments from account keys", async () => {
    const { payment } = await pendingPackagePayment(newAccount("pay"));
    await expectError(payments(TOKENS.accountA).approvePayment({ paymentId: payment.id }), Code.PermissionDenied);
    await expectError(payments(TOKENS.service).approvePayment({ paymentId: payment.id }), Code.PermissionDenied);
    await expectError(payments(TOKENS.accountA).getPayment({ paymentId: payment.id }), Code.PermissionDenied);
    await expectError(payments(TOKENS.accountA).listPaymentHistory({ paymentId: payment.id }), Code.PermissionDenied);
    await expectError(payments(TOKENS.accountA).refundPayment({ paymentId: payment.id, idempotencyKey: key() }), Code.PermissionDenied);
    await expectError(payments(TOKENS.service).submitManualPayment({ invoiceId: payment.invoiceId, paymentMethod: PaymentMethod.MANUAL, amount: "1.00", idempotencyKey: key() }), Code.PermissionDenied);
  });

  it("lists payments newest first with status and method filters", async () => {
    const account = newAccount("pay");
    const first = await pendingPackagePayment(account);
    await payments().approvePayment({ paymentId: first.payment.id });
    const second = await pendingPackagePayment(account);
    const all = await payments().listPayments({ accountId: account, pageSize: 1 });
    expect(all.payments[0]?.id).to.equal(second.payment.id);
    const rest = await payments().listPayments({ accountId: account, pageSize: 1, pageToken: all.nextPageToken });
    expect(rest.payments[0]?.id).to.equal(first.payment.id);
    const ok = await payments().listPayments({ accountId: account, statuses: [PaymentStatus.SUCCEEDED], methods: [PaymentMethod.BANK_TRANSFER] });
    expect(ok.payments.map((p) => p.id)).to.deep.equal([first.payment.id]);
    await expectError(payments(TOKENS.accountA).listPayments({}), Code.PermissionDenied);
  });
});
