/**
 * Payment providers end to end (POST /webhooks/<provider> on the API port):
 * malformed but signed deliveries are refused every time and recorded raw,
 * NUL survives the record, amounts are scaled by each currency's minor
 * digits, Stripe's running-total refunds apply only what is new, disputes
 * come and go without touching credits, PayPal refunds apply one refund at a
 * time, hostile deliveries never cause a 5xx nor any change, and migration
 * 0005 carries provider references into the generic columns.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import http from "node:http";
import { QueryTypes, type Sequelize } from "sequelize";
import { PaymentMethod } from "../../gen/billing/v1/common_pb.js";
import { CreditLotCategory, CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { InvoiceService, InvoiceStatus } from "../../gen/billing/v1/invoice_service_pb.js";
import { PaymentService, PaymentStatus } from "../../gen/billing/v1/payment_service_pb.js";
import { createSequelize } from "../../src/db/database.js";
import { EmbeddedPostgres, temporaryDataDir } from "../../src/db/embedded.js";
import { migrate } from "../../src/db/migrate.js";
import { signPaypal } from "../../src/domain/payments/providers/paypal.js";
import { signStripe } from "../../src/domain/payments/providers/stripe.js";
import { KNOWN_SECRETS, TOKENS, badFields, client, expectError, harness, key, newAccount } from "../harness.js";

// The same secrets as test/payments/webhooks.test.ts, so the two files agree when run together.
const STRIPE_SECRET = "whsec_test_billing";
const PAYPAL_SECRET = "paypal_relay_secret";
KNOWN_SECRETS.add(STRIPE_SECRET).add(PAYPAL_SECRET).add("sk_test_123");

// ---------------------------------------------------------------- helpers

type WebhookBody = { received?: boolean; outcome?: string; detail?: string; event_id?: string };
interface Delivery {
  status: number;
  text: string;
  body: WebhookBody | undefined;
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** POSTs raw bytes with raw headers (arrays send a header twice) through node:http. */
function send(path: string, body: Buffer | string, headers: http.OutgoingHttpHeaders): Promise<Delivery> {
  const bytes = typeof body === "string" ? Buffer.from(body, "utf8") : body;
  return new Promise((resolve, reject) => {
    const req = http.request(
      `${harness().baseUrl}${path}`,
      { method: "POST", headers: { "content-type": "application/json", "content-length": bytes.length, ...headers } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("error", reject);
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: WebhookBody | undefined;
          try {
            parsed = JSON.parse(text) as WebhookBody;
          } catch {
            parsed = undefined;
          }
          resolve({ status: res.statusCode ?? 0, text, body: parsed });
        });
      },
    );
    req.on("error", reject);
    req.end(bytes);
  });
}

function stripeHeaders(body: Buffer | string, secret = STRIPE_SECRET, t = nowSeconds()): http.OutgoingHttpHeaders {
  return { "stripe-signature": signStripe(body, secret, t) };
}

function sendStripe(body: Buffer | string, secret = STRIPE_SECRET, t = nowSeconds()): Promise<Delivery> {
  return send("/webhooks/stripe", body, stripeHeaders(body, secret, t));
}

function paypalHeaders(body: Buffer | string, secret = PAYPAL_SECRET, time = new Date().toISOString(), id: string = randomUUID()): http.OutgoingHttpHeaders {
  return { "paypal-transmission-id": id, "paypal-transmission-time": time, "paypal-transmission-sig": signPaypal(body, secret, id, time) };
}

function sendPaypal(body: Buffer | string, secret = PAYPAL_SECRET, time = new Date().toISOString()): Promise<Delivery> {
  return send("/webhooks/paypal", body, paypalHeaders(body, secret, time));
}

const evtId = () => `evt_${randomUUID().replace(/-/g, "")}`;
const piId = () => `pi_${randomUUID().replace(/-/g, "").slice(0, 16)}`;

/** A Stripe event's JSON text and id. */
function stripeEvent(type: string, object: unknown, id = evtId()): { id: string; body: string } {
  return { id, body: JSON.stringify({ id, object: "event", type, data: { object } }) };
}

/** A PayPal event's JSON text and id. */
function paypalEvent(eventType: string, resource: unknown, id = `WH-${randomUUID()}`): { id: string; body: string } {
  return { id, body: JSON.stringify({ id, event_type: eventType, resource }) };
}

/** A package (copied from test/invoices/invoices.test.ts, with a currency and no discount). */
async function makePackage(credits: bigint, price: string, currency = "USD"): Promise<string> {
  const slug = `pkg-${randomUUID().slice(0, 8)}`;
  await client(CreditService, TOKENS.admin).createCreditPackage({ creditPackage: { name: "Provider test pack", slug, credits, price, currency, discountPercentage: 0, isActive: true } });
  return slug;
}

/** A PENDING invoice for a new package bought by `account`. */
async function packageInvoice(account: string, credits: bigint, price: string, currency = "USD", method = PaymentMethod.STRIPE) {
  const slug = await makePackage(credits, price, currency);
  return (await client(InvoiceService, TOKENS.service).purchaseCreditPackage({ accountId: account, packageSlug: slug, paymentMethod: method, idempotencyKey: key() })).invoice!;
}

async function balanceOf(account: string): Promise<bigint> {
  return (await client(CreditService, TOKENS.service).getBalance({ accountId: account })).balance!.balance;
}

async function paymentsOf(account: string) {
  return (await client(PaymentService, TOKENS.admin).listPayments({ accountId: account })).payments;
}

async function invoiceOf(id: string) {
  return (await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: id })).invoice!;
}

async function invoicesOf(account: string) {
  return (await client(InvoiceService, TOKENS.admin).listInvoices({ accountId: account })).invoices;
}

async function historyOf(paymentId: string) {
  return (await client(PaymentService, TOKENS.admin).listPaymentHistory({ paymentId })).entries;
}

/** Everything a delivery could change about an account. */
async function stateOf(account: string) {
  return { balance: await balanceOf(account), payments: await paymentsOf(account), invoices: await invoicesOf(account) };
}

interface EventRow {
  id: string;
  provider: string;
  event_id: string;
  event_type: string;
  signature_valid: boolean;
  claimed: boolean;
  outcome: string;
  detail: string;
  payload: unknown;
  raw_body: Buffer | null;
  payment_id: string | null;
}

function select<T extends object>(sql: string, bind: unknown[] = []): Promise<T[]> {
  return harness().sequelize.query<T>(sql, { bind, type: QueryTypes.SELECT });
}

/** The webhook_events rows whose raw body is exactly these bytes, oldest first. */
function rowsWithBody(provider: string, body: Buffer | string): Promise<EventRow[]> {
  const bytes = typeof body === "string" ? Buffer.from(body, "utf8") : body;
  return select<EventRow>(`SELECT * FROM webhook_events WHERE provider = $1 AND raw_body = $2 ORDER BY id`, [provider, bytes]);
}

function rowsOfEvent(provider: string, eventId: string): Promise<EventRow[]> {
  return select<EventRow>(`SELECT * FROM webhook_events WHERE provider = $1 AND event_id = $2 ORDER BY id`, [provider, eventId]);
}

/** Copied from test/credits/ledger.test.ts: the ledger's running sums hold and equal the balance. */
async function assertLedgerConsistent(accountId: string): Promise<bigint> {
  const rows = await select<{ amount: string; balance_after: string }>(`SELECT amount, balance_after FROM credit_transactions WHERE account_id = $1 ORDER BY id`, [accountId]);
  let running = 0n;
  for (const r of rows) {
    running += BigInt(r.amount);
    expect(BigInt(r.balance_after), "balance_after is the running sum").to.equal(running);
    expect(running >= 0n, "never below zero").to.equal(true);
  }
  expect(await balanceOf(accountId), "balance = sum of amounts").to.equal(running);
  return running;
}

function expectSameBytes(actual: Buffer | null, sent: Buffer | string, what: string): void {
  const bytes = typeof sent === "string" ? Buffer.from(sent, "utf8") : sent;
  expect(actual, `${what}: raw_body kept`).to.be.instanceOf(Buffer);
  expect(actual!.length, `${what}: raw_body length`).to.equal(bytes.length);
  expect(actual!.equals(bytes), `${what}: raw_body byte-for-byte`).to.equal(true);
}

async function configureProviders(): Promise<void> {
  const admin = client(PaymentService, TOKENS.admin);
  await admin.upsertPaymentMethodConfig({ paymentMethodConfig: { countryCode: "US", paymentMethod: PaymentMethod.STRIPE, isEnabled: true, displayName: "Card" }, secrets: { webhookSecret: STRIPE_SECRET, apiKey: "sk_test_123" } });
  await admin.upsertPaymentMethodConfig({ paymentMethodConfig: { countryCode: "US", paymentMethod: PaymentMethod.PAYPAL, isEnabled: true, displayName: "PayPal" }, secrets: { webhookSecret: PAYPAL_SECRET } });
}

/** Settles `invoice` with a genuine payment_intent.succeeded; returns the payment intent id. */
async function settleByStripe(invoiceId: string, amountMinor: number, currency: string, extra: Record<string, unknown> = {}): Promise<{ pi: string; eventId: string }> {
  const pi = piId();
  const e = stripeEvent("payment_intent.succeeded", { id: pi, object: "payment_intent", amount_received: amountMinor, currency, metadata: { invoice_id: invoiceId }, ...extra });
  const res = await sendStripe(e.body);
  expect(res.status, res.text).to.equal(200);
  expect(res.body?.outcome, res.text).to.equal("settled");
  return { pi, eventId: e.id };
}

// ---------------------------------------------------------------- tests

describe("payment providers", () => {
  before(configureProviders);

  describe("Stripe deliveries whose id is not a string", () => {
    for (const [label, id] of [
      ["[]", []],
      ["5", 5],
      ["null", null],
      ["missing", undefined],
    ] as const) {
      it(`refuses a signed event with id ${label} with 400 rejected_malformed and a detail on every delivery, records each one raw, and changes nothing`, async () => {
        const account = newAccount("prov");
        const invoice = await packageInvoice(account, 300n, "30.00");
        const event: Record<string, unknown> = {
          type: "payment_intent.succeeded",
          data: { object: { id: piId(), amount_received: 3000, currency: "usd", metadata: { invoice_id: invoice.id } } },
        };
        if (id !== undefined) event.id = id;
        const body = JSON.stringify(event);
        for (const attempt of [1, 2]) {
          const res = await sendStripe(body);
          expect(res.status, `attempt ${attempt}: ${res.text}`).to.equal(400);
          expect(res.body?.outcome, `attempt ${attempt}: ${res.text}`).to.equal("rejected_malformed");
          expect(res.body?.detail, `attempt ${attempt}: detail`).to.be.a("string").that.is.not.empty;
        }
        const rows = await rowsWithBody("stripe", body);
        expect(rows.map((r) => [r.signature_valid, r.outcome]), "one row per delivery").to.deep.equal([
          [true, "rejected_malformed"],
          [true, "rejected_malformed"],
        ]);
        for (const r of rows) {
          expectSameBytes(r.raw_body, body, "malformed delivery");
          expect(r.detail, "the reason is recorded").to.not.equal("");
          expect(r.payment_id).to.equal(null);
        }
        expect((await invoiceOf(invoice.id)).status).to.equal(InvoiceStatus.PENDING);
        expect(await paymentsOf(account)).to.deep.equal([]);
        expect(await assertLedgerConsistent(account)).to.equal(0n);
      });
    }
  });

  describe("NUL in a genuine event", () => {
    it("settles a payment_intent.succeeded carrying \\u0000 in a description and keeps its raw bytes with payload NULL; the same bytes badly signed are 400 and change nothing", async () => {
      const account = newAccount("prov");
      const invoice = await packageInvoice(account, 250n, "25.00");
      const pi = piId();
      const e = stripeEvent("payment_intent.succeeded", { id: pi, amount_received: 2500, currency: "usd", description: "order \u0000 #42", metadata: { invoice_id: invoice.id } });
      expect(e.body, "the JSON text carries the escape, not a raw NUL").to.include("\\u0000").and.not.include("\u0000");

      const forged = await sendStripe(e.body, "whsec_wrong");
      expect(forged.status, forged.text).to.equal(400);
      expect(forged.body?.outcome).to.equal("rejected_signature");
      expect((await invoiceOf(invoice.id)).status).to.equal(InvoiceStatus.PENDING);
      expect(await paymentsOf(account)).to.deep.equal([]);
      expect(await balanceOf(account)).to.equal(0n);

      const ok = await sendStripe(e.body);
      expect(ok.status, ok.text).to.equal(200);
      expect(ok.body?.outcome, ok.text).to.equal("settled");
      const settled = await invoiceOf(invoice.id);
      expect(settled).to.include({ status: InvoiceStatus.PAID, amountPaid: "25.00" });
      expect(await assertLedgerConsistent(account)).to.equal(250n);
      const [payment] = await paymentsOf(account);
      expect(payment).to.include({ status: PaymentStatus.SUCCEEDED, amount: "25.00", creditsGranted: 250n, providerPaymentId: pi });

      const forgedAgain = await sendStripe(e.body, "whsec_wrong");
      expect(forgedAgain.status, forgedAgain.text).to.equal(400);
      expect(await balanceOf(account)).to.equal(250n);
      expect(await paymentsOf(account)).to.have.length(1);

      const rows = await rowsOfEvent("stripe", e.id);
      expect(rows.map((r) => [r.signature_valid, r.outcome])).to.deep.equal([
        [false, "rejected_signature"],
        [true, "settled"],
        [false, "rejected_signature"],
      ]);
      for (const r of rows) {
        expectSameBytes(r.raw_body, e.body, `${r.outcome} row`);
        expect(r.payload, `${r.outcome} row: jsonb cannot hold \\u0000`).to.equal(null);
      }
      expect(rows[1]!.payment_id).to.equal(payment!.id);
    });
  });

  describe("currencies", () => {
    for (const c of [
      { currency: "JPY", price: "1500", minor: 1500, wire: "jpy", amount: "1500" },
      { currency: "KWD", price: "1.500", minor: 1500, wire: "kwd", amount: "1.500" },
      { currency: "USD", price: "19.99", minor: 1999, wire: "usd", amount: "19.99" },
    ]) {
      it(`settles a ${c.currency} package priced "${c.price}" from amount_received ${c.minor} "${c.wire}" as ${c.amount} ${c.currency}`, async () => {
        const account = newAccount("prov");
        const invoice = await packageInvoice(account, 77n, c.price, c.currency);
        expect(invoice).to.include({ currency: c.currency, total: c.amount, amountPaid: c.currency === "JPY" ? "0" : c.currency === "KWD" ? "0.000" : "0.00" });
        await settleByStripe(invoice.id, c.minor, c.wire);
        const [payment, ...more] = await paymentsOf(account);
        expect(more).to.have.length(0);
        expect(payment).to.include({ status: PaymentStatus.SUCCEEDED, amount: c.amount, currency: c.currency, creditsGranted: 77n });
        expect(await invoiceOf(invoice.id)).to.include({ status: InvoiceStatus.PAID, total: c.amount, amountPaid: c.amount, currency: c.currency });
        expect(await assertLedgerConsistent(account)).to.equal(77n);
      });
    }

    it("refuses a package in currency XYZ with INVALID_ARGUMENT naming credit_package.currency", async () => {
      const slug = `pkg-${randomUUID().slice(0, 8)}`;
      const err = await expectError(
        client(CreditService, TOKENS.admin).createCreditPackage({ creditPackage: { name: "XYZ pack", slug, credits: 10n, price: "10.00", currency: "XYZ", isActive: true } }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.deep.equal(["credit_package.currency"]);
      await expectError(client(CreditService, TOKENS.admin).getCreditPackage({ slug }), Code.NotFound);
    });

    it("refuses CreateInvoice in currency XYZ with INVALID_ARGUMENT naming currency", async () => {
      const account = newAccount("prov");
      const err = await expectError(
        client(InvoiceService, TOKENS.admin).createInvoice({ accountId: account, currency: "XYZ", lineItems: [{ description: "Seats", quantity: 1n, unitPrice: "10.00" }], idempotencyKey: key() }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.deep.equal(["currency"]);
      expect(await invoicesOf(account)).to.deep.equal([]);
    });

    it('refuses a JPY package priced "1500.5" with INVALID_ARGUMENT naming credit_package.price', async () => {
      const slug = `pkg-${randomUUID().slice(0, 8)}`;
      const err = await expectError(
        client(CreditService, TOKENS.admin).createCreditPackage({ creditPackage: { name: "JPY pack", slug, credits: 10n, price: "1500.5", currency: "JPY", isActive: true } }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.deep.equal(["credit_package.price"]);
      await expectError(client(CreditService, TOKENS.admin).getCreditPackage({ slug }), Code.NotFound);
    });

    it("records a payment in another currency than the invoice's as ignored_amount_mismatch and changes nothing", async () => {
      const account = newAccount("prov");
      const usd = await packageInvoice(account, 50n, "19.99", "USD");
      const jpy = await packageInvoice(account, 60n, "1500", "JPY");
      const before = await stateOf(account);
      for (const [invoice, minor, wire] of [
        [usd, 1999, "eur"], // the same 19.99, in EUR
        [jpy, 1500, "krw"], // the same 1500 zero-decimal units, in KRW
        [jpy, 150000, "usd"], // 1500.00, in USD
      ] as const) {
        const e = stripeEvent("payment_intent.succeeded", { id: piId(), amount_received: minor, currency: wire, metadata: { invoice_id: invoice.id } });
        const res = await sendStripe(e.body);
        expect(res.status, res.text).to.equal(200);
        expect(res.body?.outcome, `${minor} ${wire} for ${invoice.currency}: ${res.text}`).to.equal("ignored_amount_mismatch");
        expect((await rowsOfEvent("stripe", e.id)).map((r) => [r.signature_valid, r.outcome])).to.deep.equal([[true, "ignored_amount_mismatch"]]);
      }
      expect(await stateOf(account)).to.deep.equal(before);
      expect(await assertLedgerConsistent(account)).to.equal(0n);
    });
  });

  describe("Stripe partial refunds (charge.refunded with a running amount_refunded)", () => {
    const N = 1000n; // floor(1000 * 1.00 / 19.99) = 50
    const PROMO = 500n;
    const account = newAccount("prov");
    let pi = "";
    let paymentId = "";
    let invoiceId = "";
    let fullRefund = { id: "", body: "" };
    let fullSignature: http.OutgoingHttpHeaders = {};
    const eventIds: string[] = [];

    const refundEvent = (amountRefunded: number, refunded: boolean) =>
      stripeEvent("charge.refunded", { id: `ch_${pi.slice(3)}`, object: "charge", payment_intent: pi, amount: 1999, amount_refunded: amountRefunded, refunded, currency: "usd" });

    before(async () => {
      // A promotional lot that burns first: refunds must not draw from it.
      await client(CreditService, TOKENS.admin).grantCredits({
        accountId: account,
        amount: PROMO,
        type: CreditTransactionType.ADJUSTMENT,
        category: CreditLotCategory.PROMOTIONAL,
        description: "welcome",
        idempotencyKey: key(),
      });
      const invoice = await packageInvoice(account, N, "19.99");
      invoiceId = invoice.id;
      const settled = await settleByStripe(invoice.id, 1999, "usd", { latest_charge: "ch_x" });
      pi = settled.pi;
      paymentId = (await paymentsOf(account))[0]!.id;
      expect(await assertLedgerConsistent(account)).to.equal(PROMO + N);
    });

    it('applies amount_refunded 100 of a 19.99 payment as PARTIALLY_REFUNDED "1.00", revoking floor(N x 1.00 / 19.99) credits, invoice amount_paid "18.99"', async () => {
      const e = refundEvent(100, false);
      eventIds.push(e.id);
      const res = await sendStripe(e.body);
      expect(res.status, res.text).to.equal(200);
      expect(res.body?.outcome, res.text).to.equal("partially_refunded");
      const [payment] = await paymentsOf(account);
      expect(payment).to.include({ id: paymentId, status: PaymentStatus.PARTIALLY_REFUNDED, amountRefunded: "1.00", creditsRevoked: 50n, creditsShortfall: 0n, amount: "19.99" });
      expect(await invoiceOf(invoiceId)).to.include({ status: InvoiceStatus.PAID, amountPaid: "18.99" });
      expect(await assertLedgerConsistent(account)).to.equal(PROMO + N - 50n);
    });

    it("applies nothing for an older delivery (new event id, amount_refunded 50): already_refunded", async () => {
      const before = await stateOf(account);
      const e = refundEvent(50, false);
      const res = await sendStripe(e.body);
      expect(res.status, res.text).to.equal(200);
      expect(res.body?.outcome, res.text).to.equal("already_refunded");
      expect(await stateOf(account)).to.deep.equal(before);
      expect((await rowsOfEvent("stripe", e.id)).map((r) => r.outcome)).to.deep.equal(["already_refunded"]);
    });

    it('applies amount_refunded 1999 (refunded: true) as REFUNDED, revoking N in total, invoice amount_paid "0.00"', async () => {
      fullRefund = refundEvent(1999, true);
      eventIds.push(fullRefund.id);
      fullSignature = stripeHeaders(fullRefund.body);
      const res = await send("/webhooks/stripe", fullRefund.body, fullSignature);
      expect(res.status, res.text).to.equal(200);
      expect(res.body?.outcome, res.text).to.equal("refunded");
      const [payment] = await paymentsOf(account);
      expect(payment).to.include({ status: PaymentStatus.REFUNDED, amountRefunded: "19.99", creditsGranted: N, creditsRevoked: N, creditsShortfall: 0n });
      expect(await invoiceOf(invoiceId)).to.include({ amountPaid: "0.00" });
      expect(await assertLedgerConsistent(account)).to.equal(PROMO);
    });

    it("answers a replay of the last event (same id) with duplicate and changes nothing", async () => {
      const before = await stateOf(account);
      const res = await send("/webhooks/stripe", fullRefund.body, fullSignature);
      expect(res.status, res.text).to.equal(200);
      expect(res.body?.outcome, res.text).to.equal("duplicate");
      expect(await stateOf(account)).to.deep.equal(before);
      expect((await rowsOfEvent("stripe", fullRefund.id)).map((r) => r.outcome)).to.deep.equal(["refunded", "duplicate"]);
    });

    it("draws every REFUND ledger entry only from the payment's own lot, never from the promotional lot", async () => {
      const lots = await select<{ id: string; payment_id: string | null; amount: string; remaining: string; category: string }>(
        `SELECT id, payment_id, amount, remaining, category FROM credit_lots WHERE account_id = $1 ORDER BY created_at`,
        [account],
      );
      const paid = lots.filter((l) => l.payment_id === paymentId);
      expect(paid, "one lot from the payment").to.have.length(1);
      expect(paid[0]).to.include({ amount: N.toString(), remaining: "0", category: "paid" });
      const promo = lots.find((l) => l.category === "promotional");
      expect(promo, "the promotional lot").to.include({ amount: PROMO.toString(), remaining: PROMO.toString() });
      const refunds = await select<{ amount: string; payment_id: string | null; allocations: { lot_id: string; amount: string | number }[] }>(
        `SELECT amount, payment_id, allocations FROM credit_transactions WHERE account_id = $1 AND type = 'refund' ORDER BY id`,
        [account],
      );
      expect(refunds.map((r) => r.amount)).to.deep.equal(["-50", "-950"]);
      for (const r of refunds) {
        expect(r.payment_id).to.equal(paymentId);
        expect(r.allocations.map((a) => a.lot_id), "allocations name only the payment's lot").to.deep.equal([paid[0]!.id]);
        expect(String(r.allocations[0]!.amount)).to.equal(String(-BigInt(r.amount)));
      }
    });

    it('writes history with actor "webhook:stripe" and the event id as note for each applied refund', async () => {
      const entries = await historyOf(paymentId);
      const refunds = entries.filter((e) => e.toStatus === PaymentStatus.PARTIALLY_REFUNDED || e.toStatus === PaymentStatus.REFUNDED);
      expect(refunds.map((e) => [e.fromStatus, e.toStatus, e.actor, e.note])).to.deep.equal([
        [PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED, "webhook:stripe", eventIds[1]],
        [PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED, "webhook:stripe", eventIds[0]],
      ]);
    });
  });

  describe("Stripe disputes", () => {
    it('marks the payment DISPUTED on charge.dispute.created without touching credits, returns it to SUCCEEDED on charge.dispute.closed "won", with actor webhook:stripe and the event ids as notes', async () => {
      const account = newAccount("prov");
      const invoice = await packageInvoice(account, 300n, "30.00");
      const { pi } = await settleByStripe(invoice.id, 3000, "usd");
      const paymentId = (await paymentsOf(account))[0]!.id;
      expect(await assertLedgerConsistent(account)).to.equal(300n);

      const opened = stripeEvent("charge.dispute.created", { id: "dp_1", object: "dispute", charge: "ch_1", payment_intent: pi, amount: 3000, currency: "usd", reason: "fraudulent", status: "needs_response" });
      const r1 = await sendStripe(opened.body);
      expect(r1.status, r1.text).to.equal(200);
      expect(r1.body?.outcome, r1.text).to.equal("disputed");
      expect((await paymentsOf(account))[0]).to.include({ id: paymentId, status: PaymentStatus.DISPUTED, creditsRevoked: 0n, amountRefunded: "0.00" });
      expect(await assertLedgerConsistent(account)).to.equal(300n);
      expect((await invoiceOf(invoice.id)).amountPaid).to.equal("30.00");

      const closed = stripeEvent("charge.dispute.closed", { id: "dp_1", object: "dispute", charge: "ch_1", payment_intent: pi, amount: 3000, currency: "usd", reason: "fraudulent", status: "won" });
      const r2 = await sendStripe(closed.body);
      expect(r2.status, r2.text).to.equal(200);
      expect(r2.body?.outcome, r2.text).to.match(/^dispute_closed/);
      expect((await paymentsOf(account))[0]).to.include({ id: paymentId, status: PaymentStatus.SUCCEEDED, creditsRevoked: 0n });
      expect(await assertLedgerConsistent(account)).to.equal(300n);

      const [last, previous] = await historyOf(paymentId);
      expect([last!.fromStatus, last!.toStatus, last!.actor, last!.note]).to.deep.equal([PaymentStatus.DISPUTED, PaymentStatus.SUCCEEDED, "webhook:stripe", closed.id]);
      expect([previous!.fromStatus, previous!.toStatus, previous!.actor, previous!.note]).to.deep.equal([PaymentStatus.SUCCEEDED, PaymentStatus.DISPUTED, "webhook:stripe", opened.id]);
    });
  });

  describe("refunds and disputes together", () => {
    it("applies a provider refund that arrives while the payment is DISPUTED, keeps it DISPUTED, and returns it to PARTIALLY_REFUNDED when the dispute closes", async () => {
      const account = newAccount("prov");
      const invoice = await packageInvoice(account, 300n, "30.00");
      const { pi } = await settleByStripe(invoice.id, 3000, "usd");
      const opened = await sendStripe(stripeEvent("charge.dispute.created", { id: "dp_2", payment_intent: pi, reason: "product_not_received", status: "needs_response" }).body);
      expect(opened.body?.outcome, opened.text).to.equal("disputed");
      const refunded = await sendStripe(stripeEvent("charge.refunded", { id: "ch_2", payment_intent: pi, amount_refunded: 1000, refunded: false, currency: "usd" }).body);
      expect(refunded.body?.outcome, refunded.text).to.equal("partially_refunded");
      expect((await paymentsOf(account))[0]).to.include({ status: PaymentStatus.DISPUTED, amountRefunded: "10.00", creditsRevoked: 100n });
      expect((await invoiceOf(invoice.id)).amountPaid).to.equal("20.00");
      expect(await assertLedgerConsistent(account)).to.equal(200n);
      const closed = await sendStripe(stripeEvent("charge.dispute.closed", { id: "dp_2", payment_intent: pi, status: "lost" }).body);
      expect(closed.body?.outcome, closed.text).to.equal("dispute_closed");
      expect((await paymentsOf(account))[0]).to.include({ status: PaymentStatus.PARTIALLY_REFUNDED, amountRefunded: "10.00" });
    });

    it("counts a PayPal refund once when its running total already includes a refund made through RefundPayment", async () => {
      const account = newAccount("prov");
      const invoice = await packageInvoice(account, 300n, "30.00", "USD", PaymentMethod.PAYPAL);
      const capture = `CAP-${randomUUID().slice(0, 8)}`;
      const done = await sendPaypal(paypalEvent("PAYMENT.CAPTURE.COMPLETED", { id: capture, custom_id: invoice.id, amount: { value: "30.00", currency_code: "USD" } }).body);
      expect(done.body?.outcome, done.text).to.equal("settled");
      const [payment] = await paymentsOf(account);
      await client(PaymentService, TOKENS.admin).refundPayment({ paymentId: payment!.id, amount: "5.00", reason: "goodwill", idempotencyKey: randomUUID() });
      const refund = paypalEvent("PAYMENT.CAPTURE.REFUNDED", {
        id: `REF-${randomUUID().slice(0, 8)}`,
        amount: { value: "5.00", currency_code: "USD" },
        seller_payable_breakdown: { total_refunded_amount: { value: "5.00", currency_code: "USD" } },
        links: [{ rel: "up", href: `https://api.paypal.com/v2/payments/captures/${capture}` }],
      });
      const r = await sendPaypal(refund.body);
      expect(r.body?.outcome, r.text).to.equal("already_refunded");
      expect((await paymentsOf(account))[0]).to.include({ status: PaymentStatus.PARTIALLY_REFUNDED, amountRefunded: "5.00", creditsRevoked: 50n });
      expect((await invoiceOf(invoice.id)).amountPaid).to.equal("25.00");
    });

    it("acknowledges a signed PayPal event in a currency it cannot scale (200, recorded) instead of a 400 PayPal would retry", async () => {
      const r = await sendPaypal(paypalEvent("PAYMENT.CAPTURE.COMPLETED", { id: `CAP-${randomUUID().slice(0, 8)}`, custom_id: randomUUID(), amount: { value: "30.00", currency_code: "XYZ" } }).body);
      expect(r.status, r.text).to.equal(200);
      expect(r.body?.outcome, r.text).to.equal("ignored_unknown_currency");
    });
  });

  describe("PayPal", () => {
    it("settles from PAYMENT.CAPTURE.COMPLETED and applies each PAYMENT.CAPTURE.REFUNDED as only its own amount", async () => {
      const account = newAccount("prov");
      const invoice = await packageInvoice(account, 300n, "30.00", "USD", PaymentMethod.PAYPAL);
      const capture = `CAP-${randomUUID().slice(0, 8)}`;
      const order = `ORDER-${randomUUID().slice(0, 8)}`;
      const done = paypalEvent("PAYMENT.CAPTURE.COMPLETED", {
        id: capture,
        status: "COMPLETED",
        custom_id: invoice.id,
        amount: { value: "30.00", currency_code: "USD" },
        supplementary_data: { related_ids: { order_id: order } },
      });
      const r1 = await sendPaypal(done.body);
      expect(r1.status, r1.text).to.equal(200);
      expect(r1.body?.outcome, r1.text).to.equal("settled");
      const [payment] = await paymentsOf(account);
      expect(payment).to.include({
        status: PaymentStatus.SUCCEEDED,
        paymentMethod: PaymentMethod.PAYPAL,
        amount: "30.00",
        provider: "paypal",
        providerPaymentId: capture,
        providerSecondaryId: order,
        paypalCaptureId: capture,
        paypalOrderId: order,
        creditsGranted: 300n,
      });
      expect(await invoiceOf(invoice.id)).to.include({ status: InvoiceStatus.PAID, amountPaid: "30.00" });
      expect(await assertLedgerConsistent(account)).to.equal(300n);

      const refund = (value: string) =>
        paypalEvent("PAYMENT.CAPTURE.REFUNDED", {
          id: `REF-${randomUUID().slice(0, 8)}`,
          status: "COMPLETED",
          amount: { value, currency_code: "USD" },
          links: [
            { rel: "self", href: `https://api.paypal.com/v2/payments/refunds/REF`, method: "GET" },
            { rel: "up", href: `https://api.paypal.com/v2/payments/captures/${capture}`, method: "GET" },
          ],
        });
      const first = refund("10.00");
      const r2 = await sendPaypal(first.body);
      expect(r2.status, r2.text).to.equal(200);
      expect(r2.body?.outcome, r2.text).to.equal("partially_refunded");
      expect((await paymentsOf(account))[0]).to.include({ status: PaymentStatus.PARTIALLY_REFUNDED, amountRefunded: "10.00", creditsRevoked: 100n });
      expect((await invoiceOf(invoice.id)).amountPaid).to.equal("20.00");
      expect(await assertLedgerConsistent(account)).to.equal(200n);

      const second = refund("5.00");
      const headers = paypalHeaders(second.body);
      const r3 = await send("/webhooks/paypal", second.body, headers);
      expect(r3.body?.outcome, r3.text).to.equal("partially_refunded");
      expect((await paymentsOf(account))[0]).to.include({ status: PaymentStatus.PARTIALLY_REFUNDED, amountRefunded: "15.00", creditsRevoked: 150n });
      expect(await assertLedgerConsistent(account)).to.equal(150n);

      const replay = await send("/webhooks/paypal", second.body, headers);
      expect(replay.status, replay.text).to.equal(200);
      expect(replay.body?.outcome, replay.text).to.equal("duplicate");
      expect((await paymentsOf(account))[0]).to.include({ amountRefunded: "15.00", creditsRevoked: 150n });

      const last = refund("15.00");
      const r4 = await sendPaypal(last.body);
      expect(r4.body?.outcome, r4.text).to.equal("refunded");
      expect((await paymentsOf(account))[0]).to.include({ status: PaymentStatus.REFUNDED, amountRefunded: "30.00", creditsRevoked: 300n });
      expect((await invoiceOf(invoice.id)).amountPaid).to.equal("0.00");
      expect(await assertLedgerConsistent(account)).to.equal(0n);

      const history = await historyOf(payment!.id);
      expect(history.slice(0, 3).map((e) => [e.actor, e.note])).to.deep.equal([
        ["webhook:paypal", last.id],
        ["webhook:paypal", second.id],
        ["webhook:paypal", first.id],
      ]);
    });
  });

  describe("hostile deliveries", () => {
    const account = newAccount("hostile");
    let pending = ""; // a PENDING USD 30.00 invoice: what a lax parser would settle
    let stripePi = ""; // a settled Stripe payment: what a lax parser would refund or dispute
    let capture = ""; // a settled PayPal capture
    let snapshot: Awaited<ReturnType<typeof stateOf>> | undefined;

    before(async () => {
      pending = (await packageInvoice(account, 300n, "30.00")).id;
      const s = await packageInvoice(account, 300n, "30.00");
      stripePi = (await settleByStripe(s.id, 3000, "usd")).pi;
      const p = await packageInvoice(account, 300n, "30.00", "USD", PaymentMethod.PAYPAL);
      capture = `CAP-${randomUUID().slice(0, 8)}`;
      const done = paypalEvent("PAYMENT.CAPTURE.COMPLETED", { id: capture, custom_id: p.id, amount: { value: "30.00", currency_code: "USD" } });
      const res = await sendPaypal(done.body);
      expect(res.body?.outcome, res.text).to.equal("settled");
      snapshot = await stateOf(account);
      expect(snapshot.balance).to.equal(600n);
      expect(snapshot.payments).to.have.length(2);
    });

    type Case = {
      provider: "stripe" | "paypal";
      name: string;
      body: () => Buffer | string;
      /** Default: correctly signed now. */
      headers?: (body: Buffer | string) => http.OutgoingHttpHeaders;
      status?: number;
      outcome?: string;
    };

    // Stripe: a valid settling object for the pending invoice, and variations of it.
    const pi = (over: Record<string, unknown> = {}) => ({ id: "pi_hostile", object: "payment_intent", amount_received: 3000, currency: "usd", metadata: { invoice_id: pending }, ...over });
    const st = (type: string, object: unknown, extra: Record<string, unknown> = {}) => () => JSON.stringify({ id: evtId(), type, data: { object }, ...extra });
    const succeeded = (over: Record<string, unknown>) => st("payment_intent.succeeded", pi(over));
    // PayPal: a valid completed capture for the pending invoice, and variations of it.
    const cap = (over: Record<string, unknown> = {}) => ({ id: `CAP-hostile-${randomUUID().slice(0, 8)}`, custom_id: pending, amount: { value: "30.00", currency_code: "USD" }, ...over });
    const pp = (eventType: string, resource: unknown, extra: Record<string, unknown> = {}) => () => JSON.stringify({ id: `WH-${randomUUID()}`, event_type: eventType, resource, ...extra });
    const completed = (over: Record<string, unknown>) => pp("PAYMENT.CAPTURE.COMPLETED", cap(over));
    const upLink = () => [{ rel: "up", href: `https://api.paypal.com/v2/payments/captures/${capture}` }];

    const nested = (depth: number) => "[".repeat(depth) + "]".repeat(depth);
    const deepEvent = (depth: number, type: string) => () => `{"id":"${evtId()}","type":"${type}","event_type":"${type}","data":{"object":${nested(depth)}},"resource":${nested(depth)}}`;
    const oversize = (provider: "stripe" | "paypal") => () => {
      const base = provider === "stripe" ? JSON.parse(succeeded({})()) : JSON.parse(completed({})());
      const pad = "x".repeat(1024 * 1024);
      if (provider === "stripe") base.data.object.description = pad;
      else base.resource.note_to_payer = pad;
      return JSON.stringify(base);
    };
    const rawNul = (provider: "stripe" | "paypal") => () => {
      const text = provider === "stripe" ? succeeded({ description: "NULHERE" })() : completed({ note_to_payer: "NULHERE" })();
      const [a, b] = text.split("NULHERE") as [string, string];
      return Buffer.concat([Buffer.from(a), Buffer.from([0]), Buffer.from(b)]);
    };
    const rawNulBetweenTokens = (provider: "stripe" | "paypal") => () => {
      const text = provider === "stripe" ? succeeded({})() : completed({})();
      return Buffer.concat([Buffer.from(text.slice(0, 1)), Buffer.from([0]), Buffer.from(text.slice(1))]);
    };

    const DAY = 86_400;
    const malformed = { status: 400, outcome: "rejected_malformed" };
    const stale = { status: 400, outcome: "rejected_stale" };
    const ignoredType = { status: 200, outcome: "ignored_event_type" };
    const forgedSig = { status: 400, outcome: "rejected_signature" };

    const cases: Case[] = [
      // ---- Stripe: not JSON / not an object
      { provider: "stripe", name: "a body that is not JSON", body: () => "not json at all", ...malformed },
      { provider: "stripe", name: "an empty body", body: () => "", ...malformed },
      { provider: "stripe", name: "truncated JSON", body: () => succeeded({})().slice(0, 40), ...malformed },
      { provider: "stripe", name: "JSON behind a byte-order mark", body: () => "\uFEFF" + succeeded({})(), ...malformed },
      { provider: "stripe", name: "invalid UTF-8", body: () => Buffer.concat([Buffer.from(succeeded({})().slice(0, 20)), Buffer.from([0xff, 0xfe, 0xc0])]), ...malformed },
      { provider: "stripe", name: "a JSON array holding a valid event", body: () => `[${succeeded({})()}]`, ...malformed },
      { provider: "stripe", name: "a JSON number", body: () => "5", ...malformed },
      { provider: "stripe", name: "JSON null", body: () => "null", ...malformed },
      { provider: "stripe", name: "a JSON string", body: () => JSON.stringify(succeeded({})()), ...malformed },
      { provider: "stripe", name: "JSON true", body: () => "true", ...malformed },
      { provider: "stripe", name: "deeply nested arrays (100000)", body: () => nested(100_000) },
      { provider: "stripe", name: "an event with a deeply nested data.object (100000)", body: deepEvent(100_000, "payment_intent.succeeded") },
      { provider: "stripe", name: "an event with a nested data.object (5000)", body: deepEvent(5_000, "customer.created") },
      { provider: "stripe", name: "an event with a nested data.object (3000)", body: deepEvent(3_000, "customer.created"), ...ignoredType },
      { provider: "stripe", name: "an event with a nested data.object (1000)", body: deepEvent(1_000, "customer.created"), ...ignoredType },
      { provider: "stripe", name: "deeply nested arrays with a forged signature", body: () => nested(100_000), headers: (b) => stripeHeaders(b, "whsec_wrong"), ...forgedSig },
      // ---- Stripe: wrong types
      { provider: "stripe", name: "id as an object", body: () => JSON.stringify({ id: { id: "evt_1" }, type: "payment_intent.succeeded", data: { object: pi() } }), ...malformed },
      { provider: "stripe", name: "id of 256 characters", body: () => JSON.stringify({ id: "e".repeat(256), type: "payment_intent.succeeded", data: { object: pi() } }), ...malformed },
      { provider: "stripe", name: "type as a number", body: () => JSON.stringify({ id: evtId(), type: 5, data: { object: pi() } }), ...malformed },
      { provider: "stripe", name: "type as an array", body: () => JSON.stringify({ id: evtId(), type: ["payment_intent.succeeded"], data: { object: pi() } }), ...malformed },
      { provider: "stripe", name: "data as a string", body: () => JSON.stringify({ id: evtId(), type: "payment_intent.succeeded", data: JSON.stringify({ object: pi() }) }) },
      { provider: "stripe", name: "data.object as a string", body: st("payment_intent.succeeded", JSON.stringify(pi())) },
      { provider: "stripe", name: "data.object as an array", body: st("payment_intent.succeeded", [pi()]) },
      { provider: "stripe", name: "data.object null", body: st("payment_intent.succeeded", null) },
      { provider: "stripe", name: "the payment intent id as a number", body: succeeded({ id: 12345 }) },
      { provider: "stripe", name: "the payment intent id as an object", body: succeeded({ id: { id: "pi_x" } }) },
      { provider: "stripe", name: "amount_received as a string", body: succeeded({ amount_received: "3000" }) },
      { provider: "stripe", name: "amount_received negative", body: succeeded({ amount_received: -3000 }) },
      { provider: "stripe", name: "amount_received 1.5", body: succeeded({ amount_received: 1.5 }) },
      { provider: "stripe", name: "amount_received 3000.5", body: succeeded({ amount_received: 3000.5 }) },
      { provider: "stripe", name: "amount_received 1e30", body: () => succeeded({ amount_received: 777 })().replace('"amount_received":777', '"amount_received":1e30') },
      { provider: "stripe", name: "amount_received 2^53+1", body: () => succeeded({ amount_received: 777 })().replace('"amount_received":777', '"amount_received":9007199254740993') },
      { provider: "stripe", name: "amount_received true", body: succeeded({ amount_received: true }) },
      { provider: "stripe", name: "amount_received null and amount as a string", body: succeeded({ amount_received: null, amount: "3000" }) },
      { provider: "stripe", name: "amount_received as an array", body: succeeded({ amount_received: [3000] }) },
      { provider: "stripe", name: "currency as a number", body: succeeded({ currency: 840 }) },
      { provider: "stripe", name: 'currency "usd1"', body: succeeded({ currency: "usd1" }) },
      { provider: "stripe", name: "currency as an array", body: succeeded({ currency: ["usd"] }) },
      { provider: "stripe", name: "currency with a NUL", body: succeeded({ currency: "us\u0000" }) },
      { provider: "stripe", name: "currency missing", body: succeeded({ currency: undefined }) },
      { provider: "stripe", name: "metadata as a string", body: succeeded({ metadata: `{"invoice_id":"${"x"}"}` }) },
      { provider: "stripe", name: "metadata as an array", body: () => succeeded({ metadata: [{ invoice_id: pending }] })() },
      { provider: "stripe", name: "metadata.invoice_id as a number", body: succeeded({ metadata: { invoice_id: 12345 } }) },
      { provider: "stripe", name: "metadata.invoice_id as an object", body: () => succeeded({ metadata: { invoice_id: { id: pending } } })() },
      { provider: "stripe", name: "metadata.invoice_id as an array", body: () => succeeded({ metadata: { invoice_id: [pending] } })() },
      { provider: "stripe", name: "metadata.invoice_id only under __proto__", body: () => succeeded({ metadata: JSON.parse(`{"__proto__":{"invoice_id":"${pending}"}}`) })() },
      { provider: "stripe", name: "metadata.invoice_id with a NUL", body: () => succeeded({ metadata: { invoice_id: `${pending}\u0000` } })() },
      { provider: "stripe", name: "metadata.invoice_id not a uuid", body: succeeded({ metadata: { invoice_id: "'; DROP TABLE invoices; --" } }) },
      { provider: "stripe", name: "latest_charge as an object of wrong types (with a mismatched amount)", body: succeeded({ amount_received: 2999, latest_charge: { id: { $gt: "" } } }) },
      { provider: "stripe", name: "checkout.session.completed with payment_intent as an object", body: () => st("checkout.session.completed", { id: "cs_1", payment_status: "paid", payment_intent: { id: "pi_x" }, amount_total: 3000, currency: "usd", metadata: { invoice_id: pending } })() },
      { provider: "stripe", name: "checkout.session.completed with amount_total as a string", body: () => st("checkout.session.completed", { id: "cs_1", payment_status: "paid", payment_intent: "pi_cs_x", amount_total: "3000", currency: "usd", metadata: { invoice_id: pending } })() },
      { provider: "stripe", name: "checkout.session.completed with payment_status as true", body: () => st("checkout.session.completed", { id: "cs_1", payment_status: true, payment_intent: "pi_cs_y", amount_total: 3000, currency: "usd", metadata: { invoice_id: pending } })() },
      { provider: "stripe", name: "payment_intent.payment_failed with amount as a string", body: () => st("payment_intent.payment_failed", pi({ amount_received: undefined, amount: "3000", last_payment_error: { message: "declined" } }))() },
      { provider: "stripe", name: "payment_intent.payment_failed with last_payment_error as a string (unknown invoice)", body: () => st("payment_intent.payment_failed", pi({ amount: 3000, last_payment_error: "declined", metadata: { invoice_id: randomUUID() } }))() },
      { provider: "stripe", name: "charge.refunded with payment_intent as an object", body: () => st("charge.refunded", { id: "ch_1", payment_intent: { id: stripePi }, amount_refunded: 3000, refunded: true, currency: "usd" })() },
      { provider: "stripe", name: "charge.refunded with payment_intent as an array", body: () => st("charge.refunded", { id: "ch_1", payment_intent: [stripePi], amount_refunded: 3000, refunded: true, currency: "usd" })() },
      { provider: "stripe", name: "charge.refunded with amount_refunded as a string", body: () => st("charge.refunded", { id: "ch_1", payment_intent: stripePi, amount_refunded: "3000", refunded: true, currency: "usd" })() },
      { provider: "stripe", name: "charge.refunded with amount_refunded negative", body: () => st("charge.refunded", { id: "ch_1", payment_intent: stripePi, amount_refunded: -100, refunded: false, currency: "usd" })() },
      { provider: "stripe", name: "charge.refunded with amount_refunded 1.5", body: () => st("charge.refunded", { id: "ch_1", payment_intent: stripePi, amount_refunded: 1.5, refunded: false, currency: "usd" })() },
      { provider: "stripe", name: "charge.refunded with amount_refunded 1e30", body: () => st("charge.refunded", { id: "ch_1", payment_intent: stripePi, amount_refunded: 777, refunded: true, currency: "usd" })().replace('"amount_refunded":777', '"amount_refunded":1e30') },
      { provider: "stripe", name: "charge.refunded with currency as a number", body: () => st("charge.refunded", { id: "ch_1", payment_intent: stripePi, amount_refunded: 3000, refunded: true, currency: 840 })() },
      { provider: "stripe", name: 'charge.refunded with currency "usd1"', body: () => st("charge.refunded", { id: "ch_1", payment_intent: stripePi, amount_refunded: 3000, refunded: true, currency: "usd1" })() },
      { provider: "stripe", name: "charge.refunded with data.object as a string", body: () => st("charge.refunded", JSON.stringify({ payment_intent: stripePi, amount_refunded: 3000, currency: "usd" }))() },
      { provider: "stripe", name: "charge.dispute.created with payment_intent as an object", body: () => st("charge.dispute.created", { id: "dp_1", payment_intent: { id: stripePi }, reason: "fraudulent" })() },
      { provider: "stripe", name: "charge.dispute.created with payment_intent as a number", body: () => st("charge.dispute.created", { id: "dp_1", payment_intent: 5, reason: "fraudulent" })() },
      { provider: "stripe", name: "charge.dispute.created with data.object as an array", body: () => st("charge.dispute.created", [{ id: "dp_1", payment_intent: stripePi }])() },
      { provider: "stripe", name: "charge.dispute.closed with status as an object (not disputed)", body: () => st("charge.dispute.closed", { id: "dp_1", payment_intent: stripePi, status: { won: true } })() },
      // ---- Stripe: size, NUL, headers, signatures, timestamps, types
      { provider: "stripe", name: "a correctly signed body over 1 MiB", body: oversize("stripe"), status: 413, outcome: "rejected_too_large" },
      { provider: "stripe", name: "a raw NUL byte inside a string", body: rawNul("stripe"), ...malformed },
      { provider: "stripe", name: "a raw NUL byte between tokens", body: rawNulBetweenTokens("stripe"), ...malformed },
      { provider: "stripe", name: "a raw NUL byte with a forged signature", body: rawNul("stripe"), headers: (b) => stripeHeaders(b, "whsec_wrong"), ...forgedSig },
      { provider: "stripe", name: "no signature header", body: succeeded({}), headers: () => ({}), ...forgedSig },
      {
        provider: "stripe",
        name: "the signature header twice, both forged",
        body: succeeded({}),
        headers: (b) => ({ "stripe-signature": [signStripe(b, "whsec_wrong", nowSeconds()), signStripe(b, "whsec_other", nowSeconds() - 1)] }),
        ...forgedSig,
      },
      {
        provider: "stripe",
        name: "the signature header twice, one right (an unknown event type)",
        body: st("customer.created", pi()),
        headers: (b) => ({ "stripe-signature": [signStripe(b, STRIPE_SECRET, nowSeconds()), signStripe(b, "whsec_wrong", nowSeconds())] }),
      },
      {
        provider: "stripe",
        name: "the signature header twice, the forged one first (an unknown event type)",
        body: st("customer.created", pi()),
        headers: (b) => ({ "stripe-signature": [`t=${nowSeconds() - 7},v1=${"ab".repeat(32)}`, signStripe(b, STRIPE_SECRET, nowSeconds())] }),
      },
      {
        provider: "stripe",
        name: "several v1 signatures of which one is right (accepted)",
        body: st("customer.created", pi()),
        headers: (b) => {
          const t = nowSeconds();
          const good = signStripe(b, STRIPE_SECRET, t).split("v1=")[1]!;
          return { "stripe-signature": `t=${t},v1=${"0".repeat(64)},v0=${"1".repeat(64)},v1=${good},v1=${"f".repeat(64)}` };
        },
        ...ignoredType,
      },
      { provider: "stripe", name: "a v1 signature that is not hex", body: succeeded({}), headers: () => ({ "stripe-signature": `t=${nowSeconds()},v1=zz${"0".repeat(62)}` }), ...forgedSig },
      { provider: "stripe", name: "a timestamp ten years past", body: succeeded({}), headers: (b) => stripeHeaders(b, STRIPE_SECRET, nowSeconds() - 3650 * DAY), ...stale },
      { provider: "stripe", name: "a timestamp ten years ahead", body: succeeded({}), headers: (b) => stripeHeaders(b, STRIPE_SECRET, nowSeconds() + 3650 * DAY), ...stale },
      { provider: "stripe", name: "timestamp 0", body: succeeded({}), headers: (b) => stripeHeaders(b, STRIPE_SECRET, 0), ...stale },
      { provider: "stripe", name: "timestamp 999999999999", body: succeeded({}), headers: (b) => stripeHeaders(b, STRIPE_SECRET, 999_999_999_999), ...stale },
      { provider: "stripe", name: "a timestamp 301 s ahead", body: succeeded({}), headers: (b) => stripeHeaders(b, STRIPE_SECRET, nowSeconds() + 301), ...stale },
      { provider: "stripe", name: "a negative timestamp", body: succeeded({}), headers: (b) => ({ "stripe-signature": signStripe(b, STRIPE_SECRET, -5) }), status: 400 },
      { provider: "stripe", name: "an unknown event type carrying a settling object", body: st("customer.created", pi()), ...ignoredType },
      { provider: "stripe", name: "an unknown event type with data.object as an array", body: st("product.updated", [1, 2, 3]), ...ignoredType },
      { provider: "stripe", name: "a PayPal event type on the Stripe route", body: st("PAYMENT.CAPTURE.COMPLETED", pi()), ...ignoredType },
      { provider: "stripe", name: "an empty event type", body: st("", pi()), ...malformed },

      // ---- PayPal: not JSON / not an object
      { provider: "paypal", name: "a body that is not JSON", body: () => "<xml/>", ...malformed },
      { provider: "paypal", name: "an empty body", body: () => "", ...malformed },
      { provider: "paypal", name: "truncated JSON", body: () => completed({})().slice(0, 50), ...malformed },
      { provider: "paypal", name: "a JSON array holding a valid event", body: () => `[${completed({})()}]`, ...malformed },
      { provider: "paypal", name: "a JSON number", body: () => "12", ...malformed },
      { provider: "paypal", name: "JSON null", body: () => "null", ...malformed },
      { provider: "paypal", name: "deeply nested arrays (100000)", body: () => nested(100_000) },
      { provider: "paypal", name: "an event with a deeply nested resource (100000)", body: deepEvent(100_000, "PAYMENT.CAPTURE.COMPLETED") },
      // ---- PayPal: wrong types
      { provider: "paypal", name: "id as a number", body: () => JSON.stringify({ id: 5, event_type: "PAYMENT.CAPTURE.COMPLETED", resource: cap() }), ...malformed },
      { provider: "paypal", name: "id as an array", body: () => JSON.stringify({ id: [], event_type: "PAYMENT.CAPTURE.COMPLETED", resource: cap() }), ...malformed },
      { provider: "paypal", name: "id missing", body: () => JSON.stringify({ event_type: "PAYMENT.CAPTURE.COMPLETED", resource: cap() }), ...malformed },
      { provider: "paypal", name: "event_type as a number", body: () => JSON.stringify({ id: `WH-${randomUUID()}`, event_type: 7, resource: cap() }), ...malformed },
      { provider: "paypal", name: "resource as a string", body: () => pp("PAYMENT.CAPTURE.COMPLETED", JSON.stringify(cap()))() },
      { provider: "paypal", name: "resource as an array", body: () => pp("PAYMENT.CAPTURE.COMPLETED", [cap()])() },
      { provider: "paypal", name: "resource.id as a number", body: () => completed({ id: 5 })() },
      { provider: "paypal", name: "resource.id as an object", body: () => completed({ id: { id: "CAP-x" } })() },
      { provider: "paypal", name: "amount as a string", body: () => completed({ amount: "30.00 USD" })() },
      { provider: "paypal", name: "amount.value as a number", body: () => completed({ amount: { value: 30, currency_code: "USD" } })() },
      { provider: "paypal", name: "amount.value negative", body: () => completed({ amount: { value: "-30.00", currency_code: "USD" } })() },
      { provider: "paypal", name: "amount.value with more decimals than USD has", body: () => completed({ amount: { value: "30.001", currency_code: "USD" } })() },
      { provider: "paypal", name: 'amount.value "1e30"', body: () => completed({ amount: { value: "1e30", currency_code: "USD" } })() },
      { provider: "paypal", name: "amount.value of 40 digits", body: () => completed({ amount: { value: "9".repeat(40), currency_code: "USD" } })() },
      { provider: "paypal", name: "amount.value with spaces", body: () => completed({ amount: { value: " 30.00", currency_code: "USD" } })() },
      { provider: "paypal", name: "currency_code as a number", body: () => completed({ amount: { value: "30.00", currency_code: 840 } })() },
      { provider: "paypal", name: 'currency_code "usd1"', body: () => completed({ amount: { value: "30.00", currency_code: "usd1" } })() },
      { provider: "paypal", name: "currency_code XYZ", body: () => completed({ amount: { value: "30.00", currency_code: "XYZ" } })() },
      { provider: "paypal", name: "custom_id as a number", body: () => completed({ custom_id: 12345 })() },
      { provider: "paypal", name: "custom_id as an object", body: () => completed({ custom_id: { id: pending } })() },
      { provider: "paypal", name: "custom_id as an array, invoice_id as an object", body: () => completed({ custom_id: [pending], invoice_id: { id: pending } })() },
      { provider: "paypal", name: "supplementary_data of wrong types (with a mismatched amount)", body: () => completed({ amount: { value: "29.99", currency_code: "USD" }, supplementary_data: { related_ids: [{ order_id: 5 }] } })() },
      { provider: "paypal", name: "PAYMENT.CAPTURE.DENIED with amount.value as a number", body: () => pp("PAYMENT.CAPTURE.DENIED", cap({ amount: { value: 30, currency_code: "USD" } }))() },
      { provider: "paypal", name: "PAYMENT.CAPTURE.REFUNDED with links as a string", body: () => pp("PAYMENT.CAPTURE.REFUNDED", { id: "REF-1", amount: { value: "30.00", currency_code: "USD" }, links: JSON.stringify(upLink()) })() },
      { provider: "paypal", name: "PAYMENT.CAPTURE.REFUNDED with the up href as an object", body: () => pp("PAYMENT.CAPTURE.REFUNDED", { id: "REF-1", amount: { value: "30.00", currency_code: "USD" }, links: [{ rel: "up", href: { capture } }] })() },
      { provider: "paypal", name: "PAYMENT.CAPTURE.REFUNDED with capture_id as an object", body: () => pp("PAYMENT.CAPTURE.REFUNDED", { id: "REF-1", amount: { value: "30.00", currency_code: "USD" }, capture_id: { id: capture } })() },
      { provider: "paypal", name: "PAYMENT.CAPTURE.REFUNDED with amount.value as a number", body: () => pp("PAYMENT.CAPTURE.REFUNDED", { id: "REF-1", amount: { value: 30, currency_code: "USD" }, links: upLink() })() },
      { provider: "paypal", name: "PAYMENT.CAPTURE.REFUNDED with amount.value negative", body: () => pp("PAYMENT.CAPTURE.REFUNDED", { id: "REF-1", amount: { value: "-5.00", currency_code: "USD" }, links: upLink() })() },
      { provider: "paypal", name: 'PAYMENT.CAPTURE.REFUNDED with amount.value "1e30"', body: () => pp("PAYMENT.CAPTURE.REFUNDED", { id: "REF-1", amount: { value: "1e30", currency_code: "USD" }, links: upLink() })() },
      { provider: "paypal", name: "PAYMENT.CAPTURE.REFUNDED with currency_code as a number", body: () => pp("PAYMENT.CAPTURE.REFUNDED", { id: "REF-1", amount: { value: "5.00", currency_code: 840 }, links: upLink() })() },
      { provider: "paypal", name: "CUSTOMER.DISPUTE.CREATED with disputed_transactions as an object", body: () => pp("CUSTOMER.DISPUTE.CREATED", { dispute_id: "PP-D-1", reason: "MERCHANDISE_OR_SERVICE_NOT_RECEIVED", disputed_transactions: { seller_transaction_id: capture } })() },
      { provider: "paypal", name: "CUSTOMER.DISPUTE.CREATED with seller_transaction_id as an object", body: () => pp("CUSTOMER.DISPUTE.CREATED", { dispute_id: "PP-D-1", disputed_transactions: [{ seller_transaction_id: { id: capture } }] })() },
      { provider: "paypal", name: "CUSTOMER.DISPUTE.CREATED with disputed_transactions of strings", body: () => pp("CUSTOMER.DISPUTE.CREATED", { dispute_id: "PP-D-1", disputed_transactions: [capture] })() },
      { provider: "paypal", name: "CUSTOMER.DISPUTE.RESOLVED with dispute_outcome as a string (not disputed)", body: () => pp("CUSTOMER.DISPUTE.RESOLVED", { dispute_id: "PP-D-1", disputed_transactions: [{ seller_transaction_id: capture }], dispute_outcome: "RESOLVED_BUYER_FAVOUR" })() },
      // ---- PayPal: size, NUL, headers, timestamps, types
      { provider: "paypal", name: "a correctly signed body over 1 MiB", body: oversize("paypal"), status: 413, outcome: "rejected_too_large" },
      { provider: "paypal", name: "a raw NUL byte inside a string", body: rawNul("paypal"), ...malformed },
      { provider: "paypal", name: "a raw NUL byte between tokens", body: rawNulBetweenTokens("paypal"), ...malformed },
      { provider: "paypal", name: "no signature headers", body: completed({}), headers: () => ({}), ...forgedSig },
      {
        provider: "paypal",
        name: "the signature header twice, both forged",
        body: completed({}),
        headers: (b) => {
          const h = paypalHeaders(b, "wrong");
          return { ...h, "paypal-transmission-sig": [h["paypal-transmission-sig"] as string, Buffer.alloc(32, 7).toString("base64")] };
        },
        ...forgedSig,
      },
      {
        provider: "paypal",
        name: "the signature header twice, one right (an unknown event type)",
        body: pp("BILLING.SUBSCRIPTION.CREATED", cap()),
        headers: (b) => {
          const h = paypalHeaders(b);
          return { ...h, "paypal-transmission-sig": [h["paypal-transmission-sig"] as string, Buffer.alloc(32, 7).toString("base64")] };
        },
      },
      {
        provider: "paypal",
        name: "the transmission id header twice",
        body: completed({}),
        headers: (b) => {
          const h = paypalHeaders(b, PAYPAL_SECRET, new Date().toISOString(), "tx-1");
          return { ...h, "paypal-transmission-id": ["tx-1", "tx-2"] };
        },
        status: 400,
      },
      { provider: "paypal", name: "a transmission time in 1970", body: completed({}), headers: (b) => paypalHeaders(b, PAYPAL_SECRET, new Date(0).toISOString()), ...stale },
      { provider: "paypal", name: "a transmission time ten years ahead", body: completed({}), headers: (b) => paypalHeaders(b, PAYPAL_SECRET, new Date(Date.now() + 3650 * DAY * 1000).toISOString()), ...stale },
      { provider: "paypal", name: "a transmission time that is not a date", body: completed({}), headers: (b) => paypalHeaders(b, PAYPAL_SECRET, "yesterday"), ...stale },
      { provider: "paypal", name: "an unknown event type carrying a settling resource", body: pp("BILLING.SUBSCRIPTION.CREATED", cap()), ...ignoredType },
      { provider: "paypal", name: "an unknown event type with resource as an array", body: pp("CHECKOUT.ORDER.APPROVED", [1, 2]), ...ignoredType },
      { provider: "paypal", name: "a Stripe event type on the PayPal route", body: pp("payment_intent.succeeded", cap()), ...ignoredType },
    ];

    for (const c of cases) {
      it(`${c.provider}: ${c.name} → ${c.status ?? "2xx/4xx"}${c.outcome ? ` ${c.outcome}` : ""}, never 5xx, changes nothing`, async () => {
        const body = c.body();
        const headers = c.headers ? c.headers(body) : c.provider === "stripe" ? stripeHeaders(body) : paypalHeaders(body);
        const res = await send(`/webhooks/${c.provider}`, body, headers);
        const where = `${res.status} ${res.text.slice(0, 300)}`;
        expect(res.status >= 500, `never 5xx: ${where}`).to.equal(false);
        expect((res.status >= 200 && res.status < 300) || (res.status >= 400 && res.status < 500), `2xx or 4xx: ${where}`).to.equal(true);
        if (c.status !== undefined) expect(res.status, where).to.equal(c.status);
        if (c.outcome !== undefined) expect(res.body?.outcome, where).to.equal(c.outcome);
        expect(await stateOf(account), "the account's balance, payments and invoices are unchanged").to.deep.equal(snapshot);
      });
    }

    it("keeps serving afterwards: GET is 405 and a genuine event still settles the pending invoice", async () => {
      expect((await fetch(`${harness().baseUrl}/webhooks/stripe`)).status).to.equal(405);
      expect((await fetch(`${harness().baseUrl}/webhooks/paypal`)).status).to.equal(405);
      await settleByStripe(pending, 3000, "usd");
      expect(await assertLedgerConsistent(account)).to.equal(900n);
    });
  });
});

describe("migration 0005-payment-providers over existing provider payments", function () {
  this.timeout(120_000);
  let db: EmbeddedPostgres | undefined;
  let sequelize: Sequelize | undefined;
  let appliedFirst: string[] = [];
  let appliedLater: string[] = [];
  const ACCOUNT = "acct_pre_providers";
  const INVOICE = randomUUID();
  const STRIPE_PAYMENT = randomUUID();
  const PAYPAL_PAYMENT = randomUUID();
  const MANUAL_PAYMENT = randomUUID();
  const STRIPE_ONLY_INTENT = randomUUID();

  const q = <T extends object>(sql: string, bind: unknown[] = []) => sequelize!.query<T>(sql, { bind, type: QueryTypes.SELECT });

  before(async () => {
    db = await EmbeddedPostgres.start({ dataDir: temporaryDataDir("billing-providers-migration-"), ephemeral: true });
    sequelize = createSequelize({ url: db.url(), poolMax: 5 });
    appliedFirst = await migrate(sequelize, { to: "0004-currency-amounts" });
    // Rows as the service wrote them before 0005, with the provider-specific columns.
    await sequelize.query(`
      INSERT INTO invoices (account_id, id, invoice_number, subtotal, total, amount_paid, currency, status, paid_at)
        VALUES ('${ACCOUNT}', '${INVOICE}', 'INV-PRE-0005', 90, 90, 90, 'USD', 'paid', now());
      INSERT INTO payments (account_id, id, invoice_id, amount, currency, status, payment_method, stripe_payment_intent_id, stripe_charge_id, credits_granted)
        VALUES ('${ACCOUNT}', '${STRIPE_PAYMENT}', '${INVOICE}', 30, 'USD', 'succeeded', 'stripe', 'pi_pre_0005', 'ch_pre_0005', 300);
      INSERT INTO payments (account_id, id, invoice_id, amount, currency, status, payment_method, paypal_capture_id, paypal_order_id, credits_granted)
        VALUES ('${ACCOUNT}', '${PAYPAL_PAYMENT}', '${INVOICE}', 30, 'USD', 'refunded', 'paypal', 'CAP-PRE-0005', 'ORDER-PRE-0005', 300);
      INSERT INTO payments (account_id, id, invoice_id, amount, currency, status, payment_method, stripe_payment_intent_id)
        VALUES ('${ACCOUNT}', '${STRIPE_ONLY_INTENT}', '${INVOICE}', 20, 'USD', 'failed', 'stripe', 'pi_pre_0005_failed');
      INSERT INTO payments (account_id, id, invoice_id, amount, currency, status, payment_method, manual_reference)
        VALUES ('${ACCOUNT}', '${MANUAL_PAYMENT}', '${INVOICE}', 10, 'USD', 'succeeded', 'bank_transfer', 'WIRE-1');
    `);
    appliedLater = await migrate(sequelize);
  });

  after(async () => {
    await sequelize?.close();
    await db?.stop();
  });

  it("applies up to 0004 first and 0005 on the second run", () => {
    expect(appliedFirst).to.deep.equal(["0001-initial-schema", "0002-deduct-batch-function", "0003-credit-lots", "0004-currency-amounts"]);
    expect(appliedLater[0]).to.equal("0005-payment-providers");
  });

  it("moves Stripe (payment intent, charge) and PayPal (capture, order) references into provider, provider_payment_id and provider_secondary_id", async () => {
    const rows = await q<{ id: string; provider: string | null; provider_payment_id: string | null; provider_secondary_id: string | null; status: string; payment_method: string }>(
      `SELECT id, provider, provider_payment_id, provider_secondary_id, status, payment_method FROM payments WHERE account_id = $1`,
      [ACCOUNT],
    );
    const byId = new Map(rows.map((r) => [r.id, r]));
    expect(rows).to.have.length(4);
    expect(byId.get(STRIPE_PAYMENT)).to.deep.include({ provider: "stripe", provider_payment_id: "pi_pre_0005", provider_secondary_id: "ch_pre_0005", status: "succeeded", payment_method: "stripe" });
    expect(byId.get(PAYPAL_PAYMENT)).to.deep.include({ provider: "paypal", provider_payment_id: "CAP-PRE-0005", provider_secondary_id: "ORDER-PRE-0005", status: "refunded", payment_method: "paypal" });
    expect(byId.get(STRIPE_ONLY_INTENT)).to.deep.include({ provider: "stripe", provider_payment_id: "pi_pre_0005_failed", provider_secondary_id: null, status: "failed" });
    expect(byId.get(MANUAL_PAYMENT)).to.deep.include({ provider: null, provider_payment_id: null, provider_secondary_id: null, payment_method: "bank_transfer" });
  });

  it("drops the old stripe_payment_intent_id, stripe_charge_id, paypal_capture_id and paypal_order_id columns", async () => {
    const columns = await q<{ column_name: string }>(`SELECT column_name FROM information_schema.columns WHERE table_name = 'payments'`);
    const names = columns.map((c) => c.column_name);
    expect(names).to.include.members(["provider", "provider_payment_id", "provider_secondary_id"]);
    for (const old of ["stripe_payment_intent_id", "stripe_charge_id", "paypal_capture_id", "paypal_order_id"]) expect(names, old).to.not.include(old);
  });

  it("keeps a carried-over provider reference unique per provider", async () => {
    let error: unknown;
    try {
      await sequelize!.query(
        `INSERT INTO payments (account_id, invoice_id, amount, currency, status, payment_method, provider, provider_payment_id) VALUES ($1, $2, 30, 'USD', 'failed', 'stripe', 'stripe', 'pi_pre_0005')`,
        { bind: [ACCOUNT, INVOICE] },
      );
    } catch (e) {
      error = e;
    }
    expect(error, "a second stripe payment with pi_pre_0005 is refused").to.be.instanceOf(Error);
    const pgError = (error as { parent?: { code?: string; constraint?: string } }).parent;
    expect(pgError?.code, "unique_violation").to.equal("23505");
    expect(pgError?.constraint).to.equal("payments_provider_payment");
  });
});
