/**
 * Auto top-up end to end. Three extra replicas (createApp over their own
 * pools on the harness database, each with its worker) charge through the
 * real Stripe client (fetch) against a fake Stripe on 127.0.0.1 that answers
 * like Stripe's API: a succeeded PaymentIntent, a 402 card_declined, or no
 * answer; it replays the first answer to a repeated Idempotency-Key, as
 * Stripe does. The harness's own server runs no worker (its Config has no
 * autoTopUp), so every charge here goes to the fake.
 */
import { Code, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { QueryTypes, type Sequelize } from "sequelize";
import { AutomationService, AutoTopUpState, type AutoTopUpAttempt } from "../../gen/billing/v1/automation_service_pb.js";
import { PaymentMethod } from "../../gen/billing/v1/common_pb.js";
import { CreditLotCategory, CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { EventService } from "../../gen/billing/v1/event_service_pb.js";
import { InvoiceService, InvoiceStatus } from "../../gen/billing/v1/invoice_service_pb.js";
import { PaymentService, PaymentStatus } from "../../gen/billing/v1/payment_service_pb.js";
import { createApp } from "../../src/app.js";
import { loadConfig, ConfigError } from "../../src/config.js";
import { createSequelize } from "../../src/db/database.js";
import { signStripe } from "../../src/domain/payments/providers/stripe.js";
import { createLogger } from "../../src/logger.js";
import type { BillingServer } from "../../src/server.js";
import { ACCOUNT_A, KNOWN_SECRETS, TOKENS, badFields, client, expectError, harness, key, newAccount } from "../harness.js";

const STRIPE_KEY = "sk_test_auto_top_up_4242";
KNOWN_SECRETS.add(STRIPE_KEY);
const STRIPE_WEBHOOK_SECRET = "whsec_auto_top_up_test";
KNOWN_SECRETS.add(STRIPE_WEBHOOK_SECRET);
/** A user-assigned ISO code, so no other test file's Stripe config is picked. */
const COUNTRY = "XA";
const POLL_MS = 40;
const CHARGE_TIMEOUT_MS = 800;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- fake Stripe

/**
 * How the fake answers a customer's charges: the mode is the customer id's second part (cus_<mode>_…).
 * processing: the PaymentIntent is `processing` (replayed as such), and succeeded when read back (GET);
 * error500: a 500 naming the PaymentIntent (replayed as such), which reads back declined.
 */
type Mode = "ok" | "declined" | "silent" | "slowfirst" | "processing" | "error500";

interface StripeCall {
  key: string;
  authorization: string;
  form: URLSearchParams;
}

class FakeStripe {
  readonly calls: StripeCall[] = [];
  /** Charges actually made, by idempotency key (Stripe makes at most one per key). */
  readonly charged = new Map<string, { customer: string; amount: number; currency: string }>();
  private readonly answers = new Map<string, { status: number; body: unknown }>();
  /** PaymentIntents as GET /v1/payment_intents/{id} reads them. */
  private readonly intents = new Map<string, { key: string; body: Record<string, unknown> }>();
  /** The PaymentIntent ids read back (GET), in order. */
  readonly reads: string[] = [];
  private server: http.Server | undefined;
  url = "";

  async start(): Promise<void> {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => this.answer(req, Buffer.concat(chunks).toString("utf8"), res));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve());
  }

  callsOf(customer: string): StripeCall[] {
    return this.calls.filter((c) => c.form.get("customer") === customer);
  }

  chargesOf(customer: string) {
    return [...this.charged.values()].filter((c) => c.customer === customer);
  }

  private answer(req: http.IncomingMessage, text: string, res: http.ServerResponse): void {
    const send = (status: number, body: unknown): void => void res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));
    const read = req.method === "GET" ? /^\/v1\/payment_intents\/(pi_[A-Za-z0-9]+)$/.exec(req.url ?? "") : null;
    if (!read && (req.method !== "POST" || req.url !== "/v1/payment_intents")) return send(404, { error: { type: "invalid_request_error", message: "Unrecognized request URL" } });
    if (req.headers.authorization !== `Bearer ${STRIPE_KEY}`) return send(401, { error: { type: "invalid_request_error", message: "Invalid API Key provided" } });
    if (read) {
      this.reads.push(read[1]!);
      const intent = this.intents.get(read[1]!);
      if (!intent) return send(404, { error: { type: "invalid_request_error", code: "resource_missing", message: `No such payment_intent: '${read[1]}'` } });
      return send(200, intent.body);
    }
    if (req.headers["content-type"] !== "application/x-www-form-urlencoded") return send(400, { error: { type: "invalid_request_error", message: "form-encoded bodies only" } });
    const form = new URLSearchParams(text);
    const idempotencyKey = String(req.headers["idempotency-key"] ?? "");
    this.calls.push({ key: idempotencyKey, authorization: req.headers.authorization, form });
    const customer = form.get("customer") ?? "";
    const mode = customer.split("_")[1] as Mode;
    const replay = this.answers.get(idempotencyKey);
    if (replay) return mode === "silent" ? undefined : send(replay.status, replay.body);
    if (form.get("confirm") !== "true" || form.get("off_session") !== "true") return send(400, { error: { type: "invalid_request_error", message: "expected confirm and off_session" } });
    const intent = `pi_${randomUUID().replace(/-/g, "").slice(0, 20)}`;
    if (mode === "silent") return; // never answers
    const amount = Number(form.get("amount"));
    const metadata = { invoice_id: form.get("metadata[invoice_id]"), auto_top_up_id: form.get("metadata[auto_top_up_id]") };
    if (mode === "processing") {
      const pending = { id: intent, object: "payment_intent", status: "processing", amount, amount_received: 0, currency: form.get("currency"), customer, metadata };
      this.answers.set(idempotencyKey, { status: 200, body: pending });
      // Read back later, it has succeeded: the one charge.
      this.charged.set(idempotencyKey, { customer, amount, currency: String(form.get("currency")) });
      this.intents.set(intent, { key: idempotencyKey, body: { ...pending, status: "succeeded", amount_received: amount, latest_charge: `ch_${intent.slice(3)}` } });
      return send(200, pending);
    }
    if (mode === "error500") {
      const body = { error: { type: "api_error", message: "An unknown error occurred", payment_intent: { id: intent, object: "payment_intent", status: "requires_confirmation" } } };
      this.answers.set(idempotencyKey, { status: 500, body });
      this.intents.set(intent, {
        key: idempotencyKey,
        body: { id: intent, object: "payment_intent", status: "requires_payment_method", amount, currency: form.get("currency"), customer, metadata, last_payment_error: { code: "card_declined", message: "Your card was declined." } },
      });
      return send(500, body);
    }
    if (mode === "declined") {
      const body = {
        error: {
          type: "card_error",
          code: "card_declined",
          decline_code: "insufficient_funds",
          message: "Your card has insufficient funds.",
          payment_intent: { id: intent, object: "payment_intent", status: "requires_payment_method" },
        },
      };
      this.answers.set(idempotencyKey, { status: 402, body });
      return send(402, body);
    }
    const body = {
      id: intent,
      object: "payment_intent",
      status: "succeeded",
      amount,
      amount_received: amount,
      currency: form.get("currency"),
      customer,
      payment_method: form.get("payment_method"),
      latest_charge: `ch_${intent.slice(3)}`,
      metadata: { invoice_id: form.get("metadata[invoice_id]"), auto_top_up_id: form.get("metadata[auto_top_up_id]") },
    };
    this.charged.set(idempotencyKey, { customer, amount, currency: String(form.get("currency")) });
    this.answers.set(idempotencyKey, { status: 200, body });
    // slowfirst: the charge is made, but the answer to the first request never comes.
    if (mode === "slowfirst" && this.calls.filter((c) => c.key === idempotencyKey).length === 1) return;
    send(200, body);
  }
}

// ---------------------------------------------------------------- replicas

interface Replica {
  app: BillingServer;
  sequelize: Sequelize;
  credits: Client<typeof CreditService>;
}

const bearer =
  (token: string): Interceptor =>
  (next) =>
  (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };

async function startReplica(stripeUrl: string): Promise<Replica> {
  const sequelize = createSequelize({ url: harness().databaseUrl, poolMax: 6 });
  const app = createApp({ ...harness().config, autoTopUp: { pollMs: POLL_MS, chargeTimeoutMs: CHARGE_TIMEOUT_MS, stripeApiBase: stripeUrl } }, sequelize, createLogger("silent"));
  const port = await app.listen(0, "127.0.0.1");
  const transport = createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "1.1", interceptors: [bearer(TOKENS.service)] });
  return { app, sequelize, credits: createClient(CreditService, transport) };
}

// ---------------------------------------------------------------- helpers

const automation = (token: string = TOKENS.admin) => client(AutomationService, token);
const credits = () => client(CreditService, TOKENS.admin);

async function waitFor<T>(what: string, read: () => Promise<T>, done: (v: T) => boolean, timeoutMs = 15_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await read();
    if (done(v)) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? x.toString() : x))}`);
    await sleep(50);
  }
}

/** Posts a signed Stripe webhook to the harness server. */
async function stripeWebhook(event: unknown): Promise<Response> {
  const body = JSON.stringify(event);
  return fetch(`${harness().baseUrl}/webhooks/stripe`, {
    method: "POST",
    headers: { "content-type": "application/json", "stripe-signature": signStripe(body, STRIPE_WEBHOOK_SECRET, Math.floor(Date.now() / 1000)) },
    body,
  });
}

async function attemptsOf(accountId: string): Promise<AutoTopUpAttempt[]> {
  return (await automation().listAutoTopUps({ accountId, pageSize: 100 })).attempts;
}

const finished = (a: AutoTopUpAttempt) => a.state === AutoTopUpState.SUCCEEDED || a.state === AutoTopUpState.FAILED || a.state === AutoTopUpState.SKIPPED;

/** Waits until the account has `n` attempts, all finished. */
async function settled(accountId: string, n: number, timeoutMs?: number): Promise<AutoTopUpAttempt[]> {
  return waitFor(`${n} finished top-ups of ${accountId}`, () => attemptsOf(accountId), (as) => as.length >= n && as.every(finished), timeoutMs);
}

async function balanceOf(accountId: string): Promise<bigint> {
  return (await credits().getBalance({ accountId })).balance!.balance;
}

async function grant(accountId: string, amount: bigint): Promise<void> {
  await credits().grantCredits({ accountId, amount, type: CreditTransactionType.ADJUSTMENT, description: "auto top-up test", idempotencyKey: key() });
}

async function eventsOf(accountId: string, type: string) {
  return (await client(EventService, TOKENS.admin).listEvents({ accountId, types: [type], pageSize: 100 })).events;
}

let packageId = "";
const PACKAGE_CREDITS = 1000n;

/** An account with `balance` credits, a default Stripe card of the customer `cus_<mode>_…`, and auto top-up on at `threshold`. */
async function topUpAccount(mode: Mode, balance: bigint, threshold: bigint, limits: { monthlyLimit?: number; monthlyAmountLimit?: string; packageId?: string } = {}) {
  const accountId = newAccount("atu");
  const customer = `cus_${mode}_${randomUUID().slice(0, 8)}`;
  if (balance > 0n) await grant(accountId, balance);
  const method = (
    await client(PaymentService, TOKENS.admin).createAccountPaymentMethod({
      accountPaymentMethod: { accountId, type: PaymentMethod.STRIPE, displayName: "Visa 4242", isEnabled: true, isDefault: true, countryCode: COUNTRY, providerCustomerId: customer, providerPaymentMethodId: "pm_card_visa" },
    })
  ).accountPaymentMethod!;
  const paths = ["enabled", "threshold", "package_id", ...(limits.monthlyLimit ? ["monthly_limit"] : []), ...(limits.monthlyAmountLimit ? ["monthly_amount_limit"] : [])];
  const settings = await automation().updateAutoTopUp({
    autoTopUp: { accountId, enabled: true, threshold, packageId: limits.packageId ?? packageId, monthlyLimit: limits.monthlyLimit ?? 0, monthlyAmountLimit: limits.monthlyAmountLimit ?? "" },
    updateMask: { paths },
  });
  return { accountId, customer, methodId: method.id, settings: settings.autoTopUp! };
}

// ---------------------------------------------------------------- tests

describe("auto top-up", function () {
  this.timeout(60_000);
  const stripe = new FakeStripe();
  const replicas: Replica[] = [];

  before(async () => {
    await stripe.start();
    await client(PaymentService, TOKENS.admin).upsertPaymentMethodConfig({
      paymentMethodConfig: { countryCode: COUNTRY, paymentMethod: PaymentMethod.STRIPE, isEnabled: true, displayName: "Card" },
      secrets: { apiSecret: STRIPE_KEY, webhookSecret: STRIPE_WEBHOOK_SECRET },
    });
    const slug = `atu-${randomUUID().slice(0, 8)}`;
    packageId = (await credits().createCreditPackage({ creditPackage: { name: "Auto top-up pack", slug, credits: PACKAGE_CREDITS, price: "10.00", currency: "USD", discountPercentage: 0, isActive: true } })).creditPackage!.id;
    for (let i = 0; i < 3; i++) replicas.push(await startReplica(stripe.url));
  });

  after(async () => {
    await Promise.all(replicas.map((r) => r.app.close(1_000)));
    await Promise.all(replicas.map((r) => r.sequelize.close()));
    await stripe.stop();
  });

  describe("settings", () => {
    it("are disabled defaults until set, and round-trip", async () => {
      const accountId = newAccount("atu");
      const empty = (await automation().getAutoTopUp({ accountId })).autoTopUp!;
      expect(empty).to.include({ accountId, enabled: false, threshold: 0n, packageId: "", monthlyLimit: 0, monthlyAmountLimit: "", disabledReason: "" });
      const { settings } = await topUpAccount("ok", 0n, 300n, { monthlyLimit: 4, monthlyAmountLimit: "50" });
      expect(settings).to.include({ enabled: true, threshold: 300n, packageId, monthlyLimit: 4, monthlyAmountLimit: "50.00", disabledReason: "" });
      const read = (await automation().getAutoTopUp({ accountId: settings.accountId })).autoTopUp!;
      expect(read).to.include({ enabled: true, threshold: 300n, monthlyLimit: 4, monthlyAmountLimit: "50.00" });
      // Only the masked field changes.
      const changed = (await automation().updateAutoTopUp({ autoTopUp: { accountId: settings.accountId, threshold: 99n, monthlyLimit: 77 }, updateMask: { paths: ["threshold"] } })).autoTopUp!;
      expect(changed).to.include({ enabled: true, threshold: 99n, monthlyLimit: 4 });
      // Switching off keeps the rest.
      const off = (await automation().updateAutoTopUp({ autoTopUp: { accountId: settings.accountId, enabled: false }, updateMask: { paths: ["enabled"] } })).autoTopUp!;
      expect(off).to.include({ enabled: false, threshold: 99n, packageId });
    });

    it("should name every bad field, and write nothing", async () => {
      const accountId = newAccount("atu");
      let err = await expectError(
        automation().updateAutoTopUp({ autoTopUp: { accountId, enabled: true, threshold: -1n, packageId: "nope", monthlyLimit: -2, monthlyAmountLimit: "1e3" }, updateMask: { paths: ["threshold", "package_id", "monthly_limit", "monthly_amount_limit"] } }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.have.members(["auto_top_up.threshold", "auto_top_up.package_id", "auto_top_up.monthly_limit", "auto_top_up.monthly_amount_limit"]);
      err = await expectError(automation().updateAutoTopUp({ autoTopUp: { accountId, threshold: 5n }, updateMask: { paths: ["threshold", "balance"] } }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["update_mask"]);
      err = await expectError(automation().updateAutoTopUp({ autoTopUp: { accountId } }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["update_mask"]);
      err = await expectError(automation().updateAutoTopUp({ updateMask: { paths: ["enabled"] } }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["auto_top_up.account_id"]);
      // Enabled settings need a threshold and a package.
      err = await expectError(automation().updateAutoTopUp({ autoTopUp: { accountId, enabled: true }, updateMask: { paths: ["enabled"] } }), Code.InvalidArgument);
      expect(badFields(err)).to.have.members(["auto_top_up.threshold", "auto_top_up.package_id"]);
      // The package must exist and take the limit's decimals.
      await expectError(automation().updateAutoTopUp({ autoTopUp: { accountId, packageId: randomUUID() }, updateMask: { paths: ["package_id"] } }), Code.NotFound, "NOT_FOUND");
      err = await expectError(automation().updateAutoTopUp({ autoTopUp: { accountId, packageId, monthlyAmountLimit: "10.005" }, updateMask: { paths: ["package_id", "monthly_amount_limit"] } }), Code.InvalidArgument);
      expect(badFields(err)).to.deep.equal(["auto_top_up.monthly_amount_limit"]);
      // No default method that can be charged off-session.
      await expectError(automation().updateAutoTopUp({ autoTopUp: { accountId, enabled: true, threshold: 10n, packageId }, updateMask: { paths: ["enabled", "threshold", "package_id"] } }), Code.FailedPrecondition, "PAYMENT_METHOD_REQUIRED");
      await client(PaymentService, TOKENS.admin).createAccountPaymentMethod({ accountPaymentMethod: { accountId, type: PaymentMethod.STRIPE, displayName: "No ids", isEnabled: true, isDefault: true } });
      err = await expectError(automation().updateAutoTopUp({ autoTopUp: { accountId, enabled: true, threshold: 10n, packageId }, updateMask: { paths: ["enabled", "threshold", "package_id"] } }), Code.FailedPrecondition);
      expect(err.rawMessage).to.contain("provider_customer_id");
      expect((await automation().getAutoTopUp({ accountId })).autoTopUp).to.include({ enabled: false, threshold: 0n, packageId: "" });
      // Paging.
      err = await expectError(automation().listAutoTopUps({ accountId, pageSize: -1, pageToken: "x" }), Code.InvalidArgument);
      expect(badFields(err)).to.have.members(["page_size", "page_token"]);
    });

    it("should answer hostile input with INVALID_ARGUMENT, never INTERNAL", async () => {
      const odd = ["", "\u0000", "a\u0000b", "\uD800", "x".repeat(256), "💳".repeat(300), "../../etc", "' OR 1=1 --", "-0", "1e9", "NaN", "99999999999.9999", "0.00001"];
      const int64 = [-(2n ** 63n), -1n, 0n, 2n ** 63n - 1n];
      const int32 = [-(2 ** 31), -1, 0, 2 ** 31 - 1];
      const codes = new Set<Code>();
      let i = 0;
      for (const text of odd) {
        const threshold = int64[i % int64.length]!;
        const monthlyLimit = int32[i % int32.length]!;
        i++;
        const calls: Promise<unknown>[] = [
          automation().getAutoTopUp({ accountId: text }),
          automation().listAutoTopUps({ accountId: text, pageSize: monthlyLimit, pageToken: text }),
          // Binary (gRPC): JSON cannot carry every FieldMask path.
          client(AutomationService, TOKENS.admin, "grpc-http2").updateAutoTopUp({ autoTopUp: { accountId: text || "acct_h", enabled: i % 2 === 0, threshold, packageId: text, monthlyLimit, monthlyAmountLimit: text }, updateMask: { paths: [text, "threshold", "package_id", "monthly_amount_limit"] } }),
          automation().updateAutoTopUp({ autoTopUp: { accountId: newAccount("atu"), enabled: true, threshold, packageId, monthlyLimit, monthlyAmountLimit: text } }),
        ];
        for (const r of await Promise.allSettled(calls)) {
          if (r.status === "rejected") codes.add((r.reason as { code: Code }).code);
        }
      }
      expect([...codes].every((c) => [Code.InvalidArgument, Code.NotFound, Code.FailedPrecondition].includes(c)), [...codes].map((c) => Code[c]).join()).to.equal(true);
    });

    it("should let an account key change only its own settings, and not a service key", async () => {
      await expectError(
        automation(TOKENS.accountA).updateAutoTopUp({ autoTopUp: { accountId: "acct_b", threshold: 5n }, updateMask: { paths: ["threshold"] } }),
        Code.PermissionDenied,
        "PERMISSION_DENIED",
      );
      await expectError(automation(TOKENS.service).updateAutoTopUp({ autoTopUp: { accountId: ACCOUNT_A, threshold: 5n }, updateMask: { paths: ["threshold"] } }), Code.PermissionDenied);
      await expectError(automation(TOKENS.accountA).listAutoTopUps({ accountId: "acct_b" }), Code.PermissionDenied);
      const mine = await automation(TOKENS.accountA).updateAutoTopUp({ autoTopUp: { accountId: ACCOUNT_A, threshold: 5n }, updateMask: { paths: ["threshold"] } });
      expect(mine.autoTopUp).to.include({ accountId: ACCOUNT_A, threshold: 5n, enabled: false });
    });
  });

  it("auto top-up happens once with 3 replicas racing", async () => {
    const { accountId, customer } = await topUpAccount("ok", 1000n, 500n);
    // 30 deductions of 20 credits through three replicas: the balance crosses 500 once (1000 -> 400).
    const results = await Promise.allSettled(
      Array.from({ length: 30 }, (_, i) => replicas[i % 3]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 20n }, idempotencyKey: key() })),
    );
    expect(results.filter((r) => r.status === "rejected"), "no deduction fails").to.have.length(0);
    const [attempt] = await settled(accountId, 1);
    await sleep(6 * POLL_MS); // give the other replicas every chance to charge again
    const attempts = await attemptsOf(accountId);
    expect(attempts).to.have.length(1);
    expect(attempt).to.include({ state: AutoTopUpState.SUCCEEDED, credits: PACKAGE_CREDITS, threshold: 500n, packageId, failureReason: "" });
    expect(attempt!.balanceAtTrigger < 500n).to.equal(true);
    expect(stripe.chargesOf(customer), "one charge at Stripe").to.have.length(1);
    expect(stripe.callsOf(customer).map((c) => c.key), "one request reached Stripe").to.deep.equal([attempt!.id]);
    const call = stripe.callsOf(customer)[0]!;
    expect(Object.fromEntries(call.form)).to.include({ amount: "1000", currency: "usd", customer, payment_method: "pm_card_visa", confirm: "true", off_session: "true", "metadata[invoice_id]": attempt!.invoiceId });
    // One PAID lot, from the top-up's payment, through the ordinary settle path.
    const lots = (await credits().listCreditLots({ accountId, categories: [CreditLotCategory.PAID] })).lots;
    expect(lots.map((l) => ({ amount: l.amount, paymentId: l.paymentId, packageId: l.packageId }))).to.deep.equal([{ amount: PACKAGE_CREDITS, paymentId: attempt!.paymentId, packageId }]);
    expect(await balanceOf(accountId)).to.equal(1000n - 600n + PACKAGE_CREDITS);
    const payment = (await client(PaymentService, TOKENS.admin).getPayment({ paymentId: attempt!.paymentId })).payment!;
    expect(payment).to.include({ status: PaymentStatus.SUCCEEDED, amount: "10.00", currency: "USD", invoiceId: attempt!.invoiceId, stripePaymentIntentId: attempt!.providerReference });
    const invoice = (await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: attempt!.invoiceId })).invoice!;
    expect(invoice.status).to.equal(InvoiceStatus.PAID);
    const succeeded = await waitFor("auto_top_up.succeeded", () => eventsOf(accountId, "auto_top_up.succeeded"), (e) => e.length > 0);
    expect(succeeded).to.have.length(1);
    expect(succeeded[0]!.data.case).to.equal("autoTopUp");
    expect(succeeded[0]!.data.value).to.include({ topUpId: attempt!.id, packageId, credits: PACKAGE_CREDITS, invoiceId: attempt!.invoiceId, paymentId: attempt!.paymentId });

    // A second crossing (1400 -> below 500) starts exactly one more.
    const more = await Promise.allSettled(
      Array.from({ length: 30 }, (_, i) => replicas[i % 3]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 31n }, idempotencyKey: key() })),
    );
    expect(more.filter((r) => r.status === "rejected")).to.have.length(0);
    await settled(accountId, 2);
    await sleep(6 * POLL_MS);
    expect((await attemptsOf(accountId)).map((a) => a.state)).to.deep.equal([AutoTopUpState.SUCCEEDED, AutoTopUpState.SUCCEEDED]);
    expect(stripe.chargesOf(customer)).to.have.length(2);
    expect(stripe.callsOf(customer)).to.have.length(2);
    expect(await balanceOf(accountId)).to.equal(1400n - 930n + PACKAGE_CREDITS);
  });

  it("should record a declined card, switch itself off, and resume when the default method is updated", async () => {
    const { accountId, customer, methodId } = await topUpAccount("declined", 600n, 500n);
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    const [attempt] = await settled(accountId, 1);
    expect(attempt).to.include({ state: AutoTopUpState.FAILED });
    expect(attempt!.failureReason).to.contain("card_declined").and.contain("insufficient_funds");
    expect(attempt!.providerReference).to.match(/^pi_/);
    expect(await balanceOf(accountId)).to.equal(400n);
    expect((await credits().listCreditLots({ accountId, categories: [CreditLotCategory.PAID] })).lots).to.have.length(0);
    const payment = (await client(PaymentService, TOKENS.admin).getPayment({ paymentId: attempt!.paymentId })).payment!;
    expect(payment.status).to.equal(PaymentStatus.FAILED);
    expect((await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: attempt!.invoiceId })).invoice!.status).to.equal(InvoiceStatus.VOID);
    const settings = (await automation().getAutoTopUp({ accountId })).autoTopUp!;
    expect(settings.enabled).to.equal(false);
    expect(settings.disabledReason).to.contain("card_declined");
    expect(settings.disabledAt).to.not.equal(undefined);
    const failed = await waitFor("auto_top_up.failed", () => eventsOf(accountId, "auto_top_up.failed"), (e) => e.length > 0);
    expect(failed[0]!.data.value).to.include({ topUpId: attempt!.id, invoiceId: attempt!.invoiceId, paymentId: attempt!.paymentId });
    expect((failed[0]!.data.value as { failureReason: string }).failureReason).to.contain("card_declined");

    // Switched off: another crossing starts nothing.
    await grant(accountId, 300n);
    await replicas[1]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 300n }, idempotencyKey: key() });
    await sleep(10 * POLL_MS);
    expect(await attemptsOf(accountId)).to.have.length(1);
    expect(stripe.callsOf(customer)).to.have.length(1);

    // A new card on the default method resumes it.
    const good = `cus_ok_${randomUUID().slice(0, 8)}`;
    await client(PaymentService, TOKENS.admin).updateAccountPaymentMethod({ accountPaymentMethod: { id: methodId, providerCustomerId: good }, updateMask: { paths: ["provider_customer_id"] } });
    expect((await automation().getAutoTopUp({ accountId })).autoTopUp).to.include({ enabled: true, disabledReason: "" });
    await grant(accountId, 300n);
    await replicas[2]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 300n }, idempotencyKey: key() });
    const [latest] = await settled(accountId, 2);
    expect(latest).to.include({ state: AutoTopUpState.SUCCEEDED });
    expect(stripe.chargesOf(good)).to.have.length(1);
  });

  it("should retry a charge that got no answer under the same Idempotency-Key, and charge once", async () => {
    const { accountId, customer } = await topUpAccount("slowfirst", 600n, 500n);
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    // While the first request waits for its answer, the attempt is PROCESSING and deductions go on unhindered.
    await waitFor("the first charge request", async () => stripe.callsOf(customer).length, (n) => n >= 1);
    const started = Date.now();
    await replicas[1]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 10n }, idempotencyKey: key() });
    expect(Date.now() - started).to.be.below(CHARGE_TIMEOUT_MS);
    expect((await attemptsOf(accountId))[0]!.state).to.be.oneOf([AutoTopUpState.PENDING, AutoTopUpState.PROCESSING]);
    const [attempt] = await settled(accountId, 1);
    expect(attempt).to.include({ state: AutoTopUpState.SUCCEEDED });
    expect(attempt!.tries).to.be.greaterThanOrEqual(2);
    const calls = stripe.callsOf(customer);
    expect(calls.length).to.be.greaterThanOrEqual(2);
    expect(new Set(calls.map((c) => c.key))).to.deep.equal(new Set([attempt!.id]));
    expect(new Set(calls.map((c) => c.form.toString())).size, "every try sends the same request").to.equal(1);
    expect(stripe.chargesOf(customer)).to.have.length(1);
    expect(await balanceOf(accountId)).to.equal(390n + PACKAGE_CREDITS);
  });

  it("should fail after the last unanswered try, leaving the invoice open for a late webhook", async () => {
    const { accountId, customer } = await topUpAccount("silent", 600n, 500n);
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    const [attempt] = await settled(accountId, 1, 40_000);
    expect(attempt).to.include({ state: AutoTopUpState.FAILED, tries: 5 });
    expect(attempt!.failureReason).to.contain("no answer from Stripe");
    expect(stripe.callsOf(customer)).to.have.length(5);
    expect((await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: attempt!.invoiceId })).invoice!.status).to.equal(InvoiceStatus.PENDING);
    expect((await automation().getAutoTopUp({ accountId })).autoTopUp!.enabled).to.equal(false);

    // The charge went through after all: Stripe's late payment_intent.succeeded settles the invoice, and the attempt follows.
    const intent = `pi_late${randomUUID().replace(/-/g, "").slice(0, 16)}`;
    const res = await stripeWebhook({
      id: `evt_${randomUUID().replace(/-/g, "")}`,
      type: "payment_intent.succeeded",
      data: { object: { id: intent, object: "payment_intent", status: "succeeded", amount: 1000, amount_received: 1000, currency: "usd", metadata: { invoice_id: attempt!.invoiceId, auto_top_up_id: attempt!.id } } },
    });
    expect(res.status).to.equal(200);
    const [late] = await waitFor("the reconciled attempt", () => attemptsOf(accountId), (as) => as[0]!.state === AutoTopUpState.SUCCEEDED);
    expect(late).to.include({ id: attempt!.id, providerReference: intent });
    expect(late!.paymentId).to.not.equal("");
    expect((await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: attempt!.invoiceId })).invoice!.status).to.equal(InvoiceStatus.PAID);
    expect(await balanceOf(accountId)).to.equal(400n + PACKAGE_CREDITS);
    const succeeded = await waitFor("auto_top_up.succeeded", () => eventsOf(accountId, "auto_top_up.succeeded"), (e) => e.length > 0);
    expect(succeeded[0]!.data.value).to.include({ topUpId: attempt!.id, paymentId: late!.paymentId });
  });

  it("should read back a PaymentIntent it knows instead of resending the request Stripe replays", async () => {
    const { accountId, customer } = await topUpAccount("processing", 600n, 500n);
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    const [attempt] = await settled(accountId, 1);
    expect(attempt).to.include({ state: AutoTopUpState.SUCCEEDED, failureReason: "" });
    expect(stripe.callsOf(customer), "one request to create the charge").to.have.length(1);
    expect(stripe.reads).to.include(attempt!.providerReference);
    expect(stripe.chargesOf(customer)).to.have.length(1);
    expect(await balanceOf(accountId)).to.equal(400n + PACKAGE_CREDITS);
    expect((await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: attempt!.invoiceId })).invoice!.status).to.equal(InvoiceStatus.PAID);
  });

  it("should not void the invoice of a charge whose first try had no known outcome", async () => {
    const { accountId, customer } = await topUpAccount("error500", 600n, 500n);
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    const [attempt] = await settled(accountId, 1);
    expect(attempt).to.include({ state: AutoTopUpState.FAILED });
    expect(attempt!.failureReason).to.contain("card_declined");
    expect(stripe.callsOf(customer), "the 500 is not resent").to.have.length(1);
    expect(stripe.reads).to.include(attempt!.providerReference);
    // A late payment_intent.succeeded must still be able to settle it.
    expect((await client(InvoiceService, TOKENS.admin).getInvoice({ invoiceId: attempt!.invoiceId })).invoice!.status).to.equal(InvoiceStatus.PENDING);
  });

  it("should keep the watch bounds right when alerts and auto top-up settings change at once", async () => {
    const { accountId } = await topUpAccount("ok", 0n, 300n);
    for (let i = 0; i < 25; i++) {
      await Promise.all([
        automation().setBalanceAlerts({ accountId, thresholds: [BigInt(100 + i), BigInt(200 + i)] }),
        automation().updateAutoTopUp({ autoTopUp: { accountId, threshold: BigInt(5000 + i) }, updateMask: { paths: ["threshold"] } }),
      ]);
      const [watch] = await harness().sequelize.query<{ watch_min: string; watch_max: string }>(`SELECT watch_min::text, watch_max::text FROM billing_accounts WHERE account_id = $1`, {
        bind: [accountId],
        type: QueryTypes.SELECT,
      });
      expect(watch, `round ${i}`).to.deep.equal({ watch_min: String(100 + i), watch_max: String(5000 + i) });
    }
  });

  it("should start no top-up when a refund or a negative adjustment crosses the threshold", async () => {
    const { accountId } = await topUpAccount("ok", 600n, 500n);
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    const [topUp] = await settled(accountId, 1);
    expect(topUp!.state).to.equal(AutoTopUpState.SUCCEEDED);
    expect(await balanceOf(accountId)).to.equal(1400n);
    // A refund takes the balance from 1400 to 400, across 1300.
    await automation().updateAutoTopUp({ autoTopUp: { accountId, threshold: 1300n }, updateMask: { paths: ["threshold"] } });
    await client(PaymentService, TOKENS.admin).refundPayment({ paymentId: topUp!.paymentId, reason: "refund test", idempotencyKey: key() });
    expect(await balanceOf(accountId)).to.equal(400n);
    // A negative adjustment takes it from 400 to 200, across 300.
    await automation().updateAutoTopUp({ autoTopUp: { accountId, threshold: 300n }, updateMask: { paths: ["threshold"] } });
    await credits().adjustCredits({ accountId, amount: -200n, reason: "correction", idempotencyKey: key() });
    expect(await balanceOf(accountId)).to.equal(200n);
    await sleep(10 * POLL_MS);
    expect(await attemptsOf(accountId)).to.have.length(1);
  });

  it("should not resume at month start settings switched off for a reason a new month does not fix", async () => {
    const slug = `atu-gone-${randomUUID().slice(0, 8)}`;
    const gone = (await credits().createCreditPackage({ creditPackage: { name: "Withdrawn pack", slug, credits: 10n, price: "1.00", currency: "USD", discountPercentage: 0, isActive: true } })).creditPackage!.id;
    const { accountId } = await topUpAccount("ok", 600n, 500n, { packageId: gone });
    await credits().updateCreditPackage({ creditPackage: { slug, isActive: false }, updateMask: { paths: ["is_active"] } });
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    const [attempt] = await settled(accountId, 1);
    expect(attempt).to.include({ state: AutoTopUpState.FAILED });
    expect(attempt!.failureReason).to.contain("not for sale");
    await harness().sequelize.query(`UPDATE auto_top_up_settings SET disabled_at = date_trunc('month', now()) - interval '1 day' WHERE account_id = $1`, { bind: [accountId] });
    await sleep(10 * POLL_MS);
    const settings = (await automation().getAutoTopUp({ accountId })).autoTopUp!;
    expect(settings.enabled).to.equal(false);
    expect(settings.disabledReason).to.contain("not for sale");
  });

  it("should record a charge that could not be applied for manual review, and not resume it at month start", async () => {
    const { accountId, customer } = await topUpAccount("slowfirst", 600n, 500n);
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    // While the first request waits for its answer, the invoice is voided: the charge made cannot pay it.
    await waitFor("the first charge request", async () => stripe.callsOf(customer).length, (n) => n >= 1);
    const [processing] = await attemptsOf(accountId);
    await client(InvoiceService, TOKENS.admin).voidInvoice({ invoiceId: processing!.invoiceId, reason: "voided under the charge" });
    const [attempt] = await settled(accountId, 1);
    expect(attempt).to.include({ state: AutoTopUpState.FAILED });
    expect(attempt!.failureReason).to.contain("charged but not applied");
    expect(stripe.chargesOf(customer)).to.have.length(1);
    await harness().sequelize.query(`UPDATE auto_top_up_settings SET disabled_at = date_trunc('month', now()) - interval '1 day' WHERE account_id = $1`, { bind: [accountId] });
    await sleep(10 * POLL_MS);
    expect((await automation().getAutoTopUp({ accountId })).autoTopUp!.enabled).to.equal(false);
  });

  it("should skip a top-up past the monthly count or amount limit", async () => {
    for (const limits of [{ monthlyLimit: 1 }, { monthlyAmountLimit: "15.00" }]) {
      const { accountId, customer } = await topUpAccount("ok", 600n, 500n, limits);
      await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
      await settled(accountId, 1);
      // Back above the threshold, then below again: the second top-up would pass the limit.
      await replicas[1]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 1000n }, idempotencyKey: key() });
      const [second, first] = await settled(accountId, 2);
      expect(first!.state).to.equal(AutoTopUpState.SUCCEEDED);
      expect(second!.state).to.equal(AutoTopUpState.SKIPPED);
      expect(second!.failureReason).to.contain(limits.monthlyLimit ? "monthly_limit" : "monthly_amount_limit");
      expect(stripe.chargesOf(customer)).to.have.length(1);
      // A skip is not a failure: the settings stay on.
      expect((await automation().getAutoTopUp({ accountId })).autoTopUp).to.include({ enabled: true, disabledReason: "" });
    }
  });

  it("should resume settings a failure switched off once a new month (UTC) starts", async () => {
    const { accountId } = await topUpAccount("declined", 600n, 500n);
    await replicas[0]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: 200n }, idempotencyKey: key() });
    await settled(accountId, 1);
    expect((await automation().getAutoTopUp({ accountId })).autoTopUp!.enabled).to.equal(false);
    // As if the failure happened last month.
    await harness().sequelize.query(`UPDATE auto_top_up_settings SET disabled_at = date_trunc('month', now()) - interval '1 day' WHERE account_id = $1`, { bind: [accountId] });
    const resumed = await waitFor("resumed settings", async () => (await automation().getAutoTopUp({ accountId })).autoTopUp!, (s) => s.enabled);
    expect(resumed).to.include({ enabled: true, disabledReason: "" });
    expect(resumed.disabledAt).to.equal(undefined);
  });

  it("should page attempts newest first", async () => {
    const { accountId } = await topUpAccount("ok", 600n, 500n);
    // 600 -> 400, then 1400 -> 400 twice: three crossings.
    for (let i = 0; i < 3; i++) {
      await replicas[i]!.credits.deductCredits({ accountId, operationType: "clustering", usage: { credits: i === 0 ? 200n : 1000n }, idempotencyKey: key() });
      await settled(accountId, i + 1);
    }
    const all = await attemptsOf(accountId);
    expect(all).to.have.length(3);
    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await automation(TOKENS.service).listAutoTopUps({ accountId, pageSize: 1, pageToken });
      seen.push(...page.attempts.map((a) => a.id));
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(seen).to.deep.equal(all.map((a) => a.id));
    const created = all.map((a) => a.createdAt!.seconds * 1_000_000_000n + BigInt(a.createdAt!.nanos));
    expect([...created].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0))).to.deep.equal(created);
  });

  it("reads STRIPE_API_BASE and the worker's timings from the environment", () => {
    const env = { BILLING_API_KEYS: "" };
    expect(loadConfig(env).autoTopUp).to.deep.equal({ pollMs: 2000, chargeTimeoutMs: 30000, stripeApiBase: "https://api.stripe.com" });
    expect(loadConfig({ ...env, STRIPE_API_BASE: "http://127.0.0.1:9999/", AUTO_TOP_UP_POLL_MS: "50", AUTO_TOP_UP_CHARGE_TIMEOUT_MS: "700" }).autoTopUp).to.deep.equal({
      pollMs: 50,
      chargeTimeoutMs: 700,
      stripeApiBase: "http://127.0.0.1:9999",
    });
    let err: unknown;
    try {
      loadConfig({ ...env, STRIPE_API_BASE: "ftp://x", AUTO_TOP_UP_POLL_MS: "0" });
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(ConfigError);
    expect((err as ConfigError).problems.map((p) => p.variable)).to.have.members(["STRIPE_API_BASE", "AUTO_TOP_UP_POLL_MS"]);
  });
});
