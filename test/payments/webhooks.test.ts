/**
 * Provider webhooks on the API port: signed events settle payments, forged
 * and stale ones are refused and change nothing, replays change nothing, and
 * a webhook racing an admin approval grants credits once.
 */
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import { PaymentMethod } from "../../gen/billing/v1/common_pb.js";
import { CreditService } from "../../gen/billing/v1/credit_service_pb.js";
import { InvoiceService, InvoiceStatus } from "../../gen/billing/v1/invoice_service_pb.js";
import { PaymentService, PaymentStatus } from "../../gen/billing/v1/payment_service_pb.js";
import { signPaypal } from "../../src/domain/payments/providers/paypal.js";
import { signStripe } from "../../src/domain/payments/providers/stripe.js";
import { KNOWN_SECRETS, TOKENS, client, harness, key, newAccount } from "../harness.js";
import { assertLedgerConsistent } from "../credits/ledger.test.js";
import { makePackage } from "../invoices/invoices.test.js";

const STRIPE_SECRET = "whsec_test_billing";
const PAYPAL_SECRET = "paypal_relay_secret";
KNOWN_SECRETS.add(STRIPE_SECRET).add(PAYPAL_SECRET).add("sk_test_123");

async function post(path: string, body: string, headers: Record<string, string>) {
  const res = await fetch(`${harness().baseUrl}${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
  return { status: res.status, body: (await res.json()) as { received: boolean; outcome: string } };
}

function stripeEvent(type: string, object: Record<string, unknown>) {
  return JSON.stringify({ id: `evt_${randomUUID().replace(/-/g, "")}`, type, data: { object } });
}

async function packageInvoice(account: string, credits = 300n) {
  const slug = await makePackage(credits, "30.00", 0);
  return (await client(InvoiceService, TOKENS.service).purchaseCreditPackage({ accountId: account, packageSlug: slug, paymentMethod: PaymentMethod.STRIPE, idempotencyKey: key() })).invoice!;
}

async function eventRows(eventId: string) {
  return (await harness().sequelize.query(`SELECT outcome, signature_valid FROM webhook_events WHERE event_id = $1 ORDER BY id`, { bind: [eventId], type: "SELECT" as never })) as unknown as {
    outcome: string;
    signature_valid: boolean;
  }[];
}

describe("webhooks", () => {
  before(async () => {
    const admin = client(PaymentService, TOKENS.admin);
    await admin.upsertPaymentMethodConfig({ paymentMethodConfig: { countryCode: "US", paymentMethod: PaymentMethod.STRIPE, isEnabled: true, displayName: "Card" }, secrets: { webhookSecret: STRIPE_SECRET, apiKey: "sk_test_123" } });
    await admin.upsertPaymentMethodConfig({ paymentMethodConfig: { countryCode: "US", paymentMethod: PaymentMethod.PAYPAL, isEnabled: true, displayName: "PayPal" }, secrets: { webhookSecret: PAYPAL_SECRET } });
  });

  describe("Stripe", () => {
    it("settles a payment from a signed payment_intent.succeeded, grants credits, and ignores the replay", async () => {
      const account = newAccount("wh");
      const invoice = await packageInvoice(account);
      const body = stripeEvent("payment_intent.succeeded", { id: `pi_${randomUUID().slice(0, 8)}`, amount_received: 3000, currency: "usd", metadata: { invoice_id: invoice.id } });
      const sig = signStripe(body, STRIPE_SECRET, Math.floor(Date.now() / 1000));
      const first = await post("/webhooks/stripe", body, { "stripe-signature": sig });
      expect(first).to.deep.include({ status: 200 });
      expect(first.body.outcome).to.equal("settled");
      expect((await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: invoice.id })).invoice?.status).to.equal(InvoiceStatus.PAID);
      expect(await assertLedgerConsistent(account)).to.equal(300n);
      const replay = await post("/webhooks/stripe", body, { "stripe-signature": sig });
      expect(replay.status).to.equal(200);
      expect(replay.body.outcome).to.equal("duplicate");
      expect(await assertLedgerConsistent(account)).to.equal(300n);
      const payments = await client(PaymentService, TOKENS.admin).listPayments({ accountId: account });
      expect(payments.payments).to.have.length(1);
      expect(payments.payments[0]).to.include({ status: PaymentStatus.SUCCEEDED, paymentMethod: PaymentMethod.STRIPE, amount: "30.00", creditsGranted: 300n });
      const history = await client(PaymentService, TOKENS.admin).listPaymentHistory({ paymentId: payments.payments[0]!.id });
      const id = JSON.parse(body).id as string;
      // As the proto documents: the actor names the provider, the note is the event id.
      expect(history.entries.map((e) => [e.actor, e.note])).to.deep.equal([
        ["webhook:stripe", id],
        ["webhook:stripe", id],
      ]);
      expect((await eventRows(id)).map((r) => r.outcome)).to.deep.equal(["settled", "duplicate"]);
    });

    it("refuses a forged signature, changing nothing, and still accepts the genuine event later", async () => {
      const account = newAccount("wh");
      const invoice = await packageInvoice(account);
      const body = stripeEvent("payment_intent.succeeded", { id: `pi_${randomUUID().slice(0, 8)}`, amount_received: 3000, currency: "usd", metadata: { invoice_id: invoice.id } });
      const now = Math.floor(Date.now() / 1000);
      for (const sig of [signStripe(body, "whsec_wrong", now), `t=${now},v1=${"0".repeat(64)}`, "garbage", ""]) {
        const res = await post("/webhooks/stripe", body, { "stripe-signature": sig });
        expect(res.status).to.equal(400);
        expect(res.body.outcome).to.equal("rejected_signature");
      }
      const tampered = body.replace("3000", "1");
      expect((await post("/webhooks/stripe", tampered, { "stripe-signature": signStripe(body, STRIPE_SECRET, now) })).status).to.equal(400);
      expect((await client(CreditService, TOKENS.service).getBalance({ accountId: account })).balance?.balance).to.equal(0n);
      const ok = await post("/webhooks/stripe", body, { "stripe-signature": signStripe(body, STRIPE_SECRET, now) });
      expect(ok.body.outcome).to.equal("settled");
      const id = JSON.parse(body).id as string;
      const rows = await eventRows(id);
      expect(rows.filter((r) => !r.signature_valid)).to.have.length(5);
    });

    it("refuses a stale signature beyond 300 seconds", async () => {
      const account = newAccount("wh");
      const invoice = await packageInvoice(account);
      const body = stripeEvent("payment_intent.succeeded", { id: `pi_${randomUUID().slice(0, 8)}`, amount_received: 3000, currency: "usd", metadata: { invoice_id: invoice.id } });
      const res = await post("/webhooks/stripe", body, { "stripe-signature": signStripe(body, STRIPE_SECRET, Math.floor(Date.now() / 1000) - 301) });
      expect(res.status).to.equal(400);
      expect(res.body.outcome).to.equal("rejected_stale");
      expect((await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: invoice.id })).invoice?.status).to.equal(InvoiceStatus.PENDING);
    });

    it("grants credits once when an approval and the webhook race for one invoice", async () => {
      const account = newAccount("wh");
      const invoice = await packageInvoice(account, 120n);
      const manual = (await client(PaymentService, TOKENS.admin).submitManualPayment({ invoiceId: invoice.id, paymentMethod: PaymentMethod.MANUAL, amount: invoice.total, idempotencyKey: key() })).payment!;
      const body = stripeEvent("payment_intent.succeeded", { id: `pi_${randomUUID().slice(0, 8)}`, amount_received: 3000, currency: "usd", metadata: { invoice_id: invoice.id } });
      const sig = signStripe(body, STRIPE_SECRET, Math.floor(Date.now() / 1000));
      const [approval, hook, hook2] = await Promise.allSettled([
        client(PaymentService, TOKENS.admin).approvePayment({ paymentId: manual.id }),
        post("/webhooks/stripe", body, { "stripe-signature": sig }),
        post("/webhooks/stripe", body, { "stripe-signature": sig }),
      ]);
      expect(hook.status).to.equal("fulfilled");
      expect(hook2.status).to.equal("fulfilled");
      expect(await assertLedgerConsistent(account)).to.equal(120n);
      const settled = approval.status === "fulfilled" ? 1 : 0;
      const hookSettled = [hook, hook2].filter((h) => h.status === "fulfilled" && (h.value as { body: { outcome: string } }).body.outcome === "settled").length;
      expect(settled + hookSettled).to.equal(1);
    });

    it("refunds from charge.refunded, taking back what is available", async () => {
      const account = newAccount("wh");
      const invoice = await packageInvoice(account, 100n);
      const pi = `pi_${randomUUID().slice(0, 8)}`;
      const paid = stripeEvent("payment_intent.succeeded", { id: pi, amount_received: 3000, currency: "usd", metadata: { invoice_id: invoice.id } });
      await post("/webhooks/stripe", paid, { "stripe-signature": signStripe(paid, STRIPE_SECRET, Math.floor(Date.now() / 1000)) });
      await client(CreditService, TOKENS.service).deductCredits({ accountId: account, operationType: "linking", usage: { credits: 40n }, idempotencyKey: key() });
      const refund = stripeEvent("charge.refunded", { id: "ch_1", payment_intent: pi, amount_refunded: 3000, refunded: true, currency: "usd" });
      const res = await post("/webhooks/stripe", refund, { "stripe-signature": signStripe(refund, STRIPE_SECRET, Math.floor(Date.now() / 1000)) });
      expect(res.body.outcome).to.equal("refunded");
      const payment = (await client(PaymentService, TOKENS.admin).listPayments({ accountId: account })).payments[0]!;
      expect(payment).to.include({ status: PaymentStatus.REFUNDED, creditsRevoked: 60n, creditsShortfall: 40n });
      expect(await assertLedgerConsistent(account)).to.equal(0n);
    });

    it("records a failed payment and ignores unknown event types", async () => {
      const account = newAccount("wh");
      const invoice = await packageInvoice(account);
      const failed = stripeEvent("payment_intent.payment_failed", { id: `pi_${randomUUID().slice(0, 8)}`, amount: 3000, currency: "usd", metadata: { invoice_id: invoice.id }, last_payment_error: { message: "card declined" } });
      const res = await post("/webhooks/stripe", failed, { "stripe-signature": signStripe(failed, STRIPE_SECRET, Math.floor(Date.now() / 1000)) });
      expect(res.body.outcome).to.equal("failed");
      const p = (await client(PaymentService, TOKENS.admin).listPayments({ accountId: account })).payments[0]!;
      expect(p).to.include({ status: PaymentStatus.FAILED, failureReason: "card declined" });
      const other = stripeEvent("customer.created", { id: "cus_1" });
      expect((await post("/webhooks/stripe", other, { "stripe-signature": signStripe(other, STRIPE_SECRET, Math.floor(Date.now() / 1000)) })).body.outcome).to.equal("ignored_event_type");
    });
  });

  describe("PayPal", () => {
    it("settles from a signed PAYMENT.CAPTURE.COMPLETED and refuses a forged one", async () => {
      const account = newAccount("wh");
      const invoice = await packageInvoice(account, 200n);
      const body = JSON.stringify({
        id: `WH-${randomUUID()}`,
        event_type: "PAYMENT.CAPTURE.COMPLETED",
        resource: { id: `CAP-${randomUUID().slice(0, 8)}`, custom_id: invoice.id, amount: { value: "30.00", currency_code: "USD" } },
      });
      const id = randomUUID();
      const time = new Date().toISOString();
      const forged = await post("/webhooks/paypal", body, { "paypal-transmission-id": id, "paypal-transmission-time": time, "paypal-transmission-sig": signPaypal(body, "wrong", id, time) });
      expect(forged.status).to.equal(400);
      expect(await assertLedgerConsistent(account)).to.equal(0n);
      const ok = await post("/webhooks/paypal", body, { "paypal-transmission-id": id, "paypal-transmission-time": time, "paypal-transmission-sig": signPaypal(body, PAYPAL_SECRET, id, time) });
      expect(ok.body.outcome).to.equal("settled");
      expect(await assertLedgerConsistent(account)).to.equal(200n);
      const stale = new Date(Date.now() - 600_000).toISOString();
      const old = await post("/webhooks/paypal", body, { "paypal-transmission-id": id, "paypal-transmission-time": stale, "paypal-transmission-sig": signPaypal(body, PAYPAL_SECRET, id, stale) });
      expect(old.body.outcome).to.equal("rejected_stale");
    });
  });

  it("answers GET with 405 and oversize bodies with 413", async () => {
    const res = await fetch(`${harness().baseUrl}/webhooks/stripe`);
    expect(res.status).to.equal(405);
    const big = await fetch(`${harness().baseUrl}/webhooks/stripe`, { method: "POST", body: "x".repeat(2 * 1024 * 1024) });
    expect(big.status).to.equal(413);
    expect(((await big.json()) as { outcome: string }).outcome).to.equal("rejected_too_large");
  });
});
