/**
 * Partial refunds by provenance: a package payment's credits are one PAID
 * lot linked to the payment; refunds (whole or partial) take back the
 * refunded share of those credits from that lot only, never from other lots.
 */
import { toJson } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { Decimal } from "decimal.js";
import { CreditLotCategory, CreditLotState, CreditService, CreditTransactionType, type CreditLot } from "../../gen/billing/v1/credit_service_pb.js";
import { InvoiceService } from "../../gen/billing/v1/invoice_service_pb.js";
import { PaymentService, PaymentStatus, RefundPaymentResponseSchema } from "../../gen/billing/v1/payment_service_pb.js";
import { TOKENS, badFields, client, expectError, harness, key, newAccount } from "../harness.js";
import { pendingPackagePayment } from "./payments.test.js";

const payments = () => client(PaymentService, TOKENS.admin);
const credits = () => client(CreditService, TOKENS.service);
const invoices = () => client(InvoiceService, TOKENS.service);

/** A package of `packageCredits` bought by a fresh account and approved: its account, payment, invoice and package id. */
async function paidPackage(packageCredits: bigint) {
  const account = newAccount("refund");
  const { invoice, payment, slug } = await pendingPackagePayment(account, packageCredits);
  const approved = (await payments().approvePayment({ paymentId: payment.id })).payment!;
  expect(approved).to.include({ status: PaymentStatus.SUCCEEDED, creditsGranted: packageCredits });
  const packageId = (await credits().getCreditPackage({ slug })).creditPackage!.id;
  return { account, payment: approved, invoiceId: invoice.id, packageId };
}

async function lotsOf(accountId: string): Promise<CreditLot[]> {
  return (await credits().listCreditLots({ accountId, pageSize: 500 })).lots;
}

async function refundEntries(accountId: string) {
  return (await credits().listTransactions({ accountId, types: [CreditTransactionType.REFUND], pageSize: 500 })).transactions;
}

/** Everything a refund could change, to show that a refused or replayed one changed nothing. */
async function snapshot(accountId: string, paymentId: string, invoiceId: string) {
  const [row] = (await harness().sequelize.query(
    `SELECT (SELECT count(*) FROM credit_transactions WHERE account_id = $1) AS tx,
            (SELECT count(*) FROM payment_history WHERE account_id = $1) AS history`,
    { bind: [accountId], type: "SELECT" as never },
  )) as unknown as { tx: string; history: string }[];
  const payment = (await payments().getPayment({ paymentId })).payment!;
  const invoice = (await invoices().getInvoice({ invoiceId })).invoice!;
  return {
    rows: row,
    balance: (await credits().getBalance({ accountId })).balance!.balance,
    lots: (await lotsOf(accountId)).map((l) => [l.id, l.state, l.remaining]),
    payment: { status: payment.status, amountRefunded: payment.amountRefunded, creditsRevoked: payment.creditsRevoked, creditsShortfall: payment.creditsShortfall },
    invoice: { status: invoice.status, amountPaid: invoice.amountPaid },
  };
}

/** Balance = Σ lots' remaining = Σ ledger amounts. */
async function assertBalanced(accountId: string): Promise<bigint> {
  const balance = (await credits().getBalance({ accountId })).balance!.balance;
  const lots = await lotsOf(accountId);
  const txs = (await credits().listTransactions({ accountId, pageSize: 500 })).transactions;
  expect(lots.reduce((s, l) => s + l.remaining, 0n), "Σ lots' remaining = balance").to.equal(balance);
  expect(txs.reduce((s, t) => s + t.amount, 0n), "Σ ledger = balance").to.equal(balance);
  return balance;
}

describe("PaymentService refunds by provenance", () => {
  it("grants a package's credits as one PAID lot linked to the payment and the package", async () => {
    const { account, payment, packageId } = await paidPackage(101n);
    const lots = await lotsOf(account);
    expect(lots).to.have.length(1);
    const purchase = (await credits().listTransactions({ accountId: account, types: [CreditTransactionType.PURCHASE] })).transactions[0]!;
    expect(lots[0]).to.include({ category: CreditLotCategory.PAID, state: CreditLotState.ACTIVE, amount: 101n, remaining: 101n, priority: 40, paymentId: payment.id, packageId, transactionId: purchase.id });
    expect(packageId).to.not.equal("");
    expect(lots[0]!.expiresAt).to.equal(undefined);
  });

  it("refunds half of the price for the floor of its share of the credits, from the payment's lot only, then the rest", async () => {
    const { account, payment, invoiceId } = await paidPackage(101n);
    const paidLot = (await lotsOf(account))[0]!;
    const other = (await credits().grantCredits({ accountId: account, amount: 20n, type: CreditTransactionType.ADJUSTMENT, category: CreditLotCategory.PROMOTIONAL, idempotencyKey: key() })).lot!;
    const price = new Decimal(payment.amount);
    const half = price.div(2).toFixed(2, Decimal.ROUND_DOWN);
    const paidBefore = new Decimal((await invoices().getInvoice({ invoiceId })).invoice!.amountPaid);
    expect(paidBefore.eq(price)).to.equal(true);

    const first = (await payments().refundPayment({ paymentId: payment.id, reason: "half back", amount: half, idempotencyKey: key() })).payment!;
    const firstShare = BigInt(new Decimal(101).times(half).div(price).floor().toFixed(0));
    expect(first).to.include({ status: PaymentStatus.PARTIALLY_REFUNDED, amountRefunded: half, creditsRevoked: firstShare, creditsShortfall: 0n });
    let entries = await refundEntries(account);
    expect(entries).to.have.length(1);
    expect(entries[0]).to.include({ type: CreditTransactionType.REFUND, amount: -firstShare, paymentId: payment.id });
    expect(entries[0]!.allocations.map((a) => [a.lotId, a.amount])).to.deep.equal([[paidLot.id, firstShare]]);
    expect(new Decimal((await invoices().getInvoice({ invoiceId })).invoice!.amountPaid).eq(paidBefore.minus(half)), "invoice amount_paid drops by the refund").to.equal(true);
    let lots = await lotsOf(account);
    expect(lots.find((l) => l.id === paidLot.id)).to.include({ remaining: 101n - firstShare });
    expect(lots.find((l) => l.id === other.id)).to.include({ remaining: 20n, state: CreditLotState.ACTIVE });
    expect(await assertBalanced(account)).to.equal(121n - firstShare);

    // The rest (amount empty = all that is left) completes the refund and takes back every credit granted.
    const second = (await payments().refundPayment({ paymentId: payment.id, reason: "the rest", idempotencyKey: key() })).payment!;
    expect(second).to.include({ status: PaymentStatus.REFUNDED, amountRefunded: price.toFixed(2), creditsRevoked: 101n, creditsShortfall: 0n });
    entries = await refundEntries(account);
    expect(entries).to.have.length(2);
    expect(entries[0]).to.include({ amount: -(101n - firstShare), paymentId: payment.id });
    expect(entries[0]!.allocations.map((a) => [a.lotId, a.amount])).to.deep.equal([[paidLot.id, 101n - firstShare]]);
    expect(new Decimal((await invoices().getInvoice({ invoiceId })).invoice!.amountPaid).eq(0)).to.equal(true);
    lots = await lotsOf(account);
    expect(lots.find((l) => l.id === paidLot.id)?.remaining).to.equal(0n);
    expect(lots.find((l) => l.id === other.id)).to.include({ remaining: 20n, state: CreditLotState.ACTIVE });
    expect(await assertBalanced(account)).to.equal(20n);
    await expectError(payments().refundPayment({ paymentId: payment.id, reason: "again", idempotencyKey: key() }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
  });

  it("refuses an amount above what is left to refund, or malformed, naming amount and changing nothing", async () => {
    const { account, payment, invoiceId } = await paidPackage(100n);
    const price = new Decimal(payment.amount);
    const half = price.div(2).toFixed(2, Decimal.ROUND_DOWN);
    await payments().refundPayment({ paymentId: payment.id, amount: half, idempotencyKey: key() });
    const before = await snapshot(account, payment.id, invoiceId);
    const left = price.minus(half);
    for (const amount of [left.plus("0.01").toFixed(2), price.toFixed(2), "1.005", "-1", "abc"]) {
      const err = await expectError(payments().refundPayment({ paymentId: payment.id, amount, idempotencyKey: key() }), Code.InvalidArgument);
      expect(badFields(err), amount).to.include("amount");
    }
    expect(await snapshot(account, payment.id, invoiceId)).to.deep.equal(before);
  });

  it("never takes credits of other lots: spent credits of the payment's lot are CREDITS_ALREADY_SPENT unless revoke_available_only", async () => {
    const { account, payment, invoiceId } = await paidPackage(100n);
    const paidLot = (await lotsOf(account))[0]!;
    // A promotional lot that burns after the paid one, so that the account as a whole could cover the refund.
    const promo = (
      await client(CreditService, TOKENS.admin).grantCredits({ accountId: account, amount: 200n, type: CreditTransactionType.ADJUSTMENT, category: CreditLotCategory.PROMOTIONAL, priority: 50, idempotencyKey: key() })
    ).lot!;
    const spent = await credits().deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 70n }, idempotencyKey: key() });
    expect(spent.transaction?.allocations.map((a) => [a.lotId, a.amount])).to.deep.equal([[paidLot.id, 70n]]);
    expect((await lotsOf(account)).find((l) => l.id === paidLot.id)?.remaining).to.equal(30n);

    const before = await snapshot(account, payment.id, invoiceId);
    await expectError(payments().refundPayment({ paymentId: payment.id, reason: "chargeback", idempotencyKey: key() }), Code.FailedPrecondition, "CREDITS_ALREADY_SPENT");
    expect(await snapshot(account, payment.id, invoiceId)).to.deep.equal(before);
    expect(before.payment.status).to.equal(PaymentStatus.SUCCEEDED);

    const done = (await payments().refundPayment({ paymentId: payment.id, reason: "chargeback", revokeAvailableOnly: true, idempotencyKey: key() })).payment!;
    expect(done).to.include({ status: PaymentStatus.REFUNDED, creditsRevoked: 30n, creditsShortfall: 70n, amountRefunded: payment.amount });
    const entries = await refundEntries(account);
    expect(entries).to.have.length(1);
    expect(entries[0]).to.include({ amount: -30n, paymentId: payment.id });
    expect(entries[0]!.allocations.map((a) => [a.lotId, a.amount])).to.deep.equal([[paidLot.id, 30n]]);
    const lots = await lotsOf(account);
    expect(lots.find((l) => l.id === paidLot.id)?.remaining).to.equal(0n);
    expect(lots.find((l) => l.id === promo.id)).to.include({ remaining: 200n, state: CreditLotState.ACTIVE });
    expect(await assertBalanced(account)).to.equal(200n);
  });

  it("answers a retried refund with the same payment and changes nothing more", async () => {
    const { account, payment, invoiceId } = await paidPackage(100n);
    const half = new Decimal(payment.amount).div(2).toFixed(2, Decimal.ROUND_DOWN);
    const req = { paymentId: payment.id, reason: "partial", amount: half, idempotencyKey: key() };
    const first = await payments().refundPayment(req);
    expect(first.payment).to.include({ status: PaymentStatus.PARTIALLY_REFUNDED, creditsRevoked: 50n });
    const after = await snapshot(account, payment.id, invoiceId);
    const retry = await payments().refundPayment(req);
    expect(toJson(RefundPaymentResponseSchema, retry)).to.deep.equal(toJson(RefundPaymentResponseSchema, first));
    expect(await snapshot(account, payment.id, invoiceId)).to.deep.equal(after);
    expect(await refundEntries(account)).to.have.length(1);
    expect(await assertBalanced(account)).to.equal(50n);
  });
});
