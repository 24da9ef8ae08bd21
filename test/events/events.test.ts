/**
 * Domain events through the API: each change other systems care about
 * writes one event in its own transaction (none for a change that rolled
 * back); low-balance thresholds fire once per crossing, also under racing
 * coalesced deductions; ListEvents pages in commit order with a resumable
 * cursor; WatchEvents streams them as they commit.
 */
import { fromJsonString } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { AutomationService } from "../../gen/billing/v1/automation_service_pb.js";
import { CreditLotCategory, CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { EventSchema, EventService, type Event } from "../../gen/billing/v1/event_service_pb.js";
import { PaymentService } from "../../gen/billing/v1/payment_service_pb.js";
import { eventJson } from "../../src/handlers/event-service.js";
import { Events } from "../../src/domain/events/events.js";
import { ACCOUNT_A, ACCOUNT_B, TOKENS, badFields, client, errorReason, expectError, harness, key, newAccount, type Protocol } from "../harness.js";
import { pendingPackagePayment } from "../payments/payments.test.js";

const events = (token: string = TOKENS.admin) => client(EventService, token);
const alerts = (token: string = TOKENS.service) => client(AutomationService, token);
const credits = (protocol: Protocol = "connect-json-http1") => client(CreditService, TOKENS.service, protocol);
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function grant(accountId: string, amount: bigint, extra: { expiresAt?: Date } = {}) {
  return client(CreditService, TOKENS.admin).grantCredits({
    accountId,
    amount,
    type: CreditTransactionType.ADJUSTMENT,
    category: CreditLotCategory.PROMOTIONAL,
    description: "events test",
    ...(extra.expiresAt ? { expiresAt: timestampFromDate(extra.expiresAt) } : {}),
    idempotencyKey: key(),
  });
}

function deduct(accountId: string, amount: bigint, protocol: Protocol = "connect-json-http1") {
  return credits(protocol).deductCredits({ accountId, operationType: "clustering", usage: { credits: amount }, idempotencyKey: key() });
}

/** Every event of an account, in commit order (reading until the pages end). */
async function eventsOf(accountId: string, types: string[] = []): Promise<Event[]> {
  const out: Event[] = [];
  let pageToken = "";
  do {
    const page = await events().listEvents({ accountId, types, pageSize: 100, pageToken });
    out.push(...page.events);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return out;
}

/** Waits until `accountId` has at least `n` events of `types` (events are readable once older transactions end). */
async function waitForEvents(accountId: string, types: string[], n: number, timeoutMs = 10_000): Promise<Event[]> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const found = await eventsOf(accountId, types);
    if (found.length >= n || Date.now() > until) return found;
    await sleep(100);
  }
}

describe("EventService events", () => {
  it("writes credits.granted for a grant, with the lot, amount and balance, in the canonical JSON mapping", async () => {
    const account = newAccount("evt");
    const granted = await grant(account, 700n);
    const [e] = await waitForEvents(account, ["credits.granted"], 1);
    expect(e).to.include({ type: "credits.granted", accountId: account });
    expect(e!.id).to.match(/^evt_[0-9a-f]{32}$/);
    expect(e!.data.case).to.equal("creditsGranted");
    expect(e!.data.value).to.include({ amount: 700n, balanceAfter: 700n, lotId: granted.lot!.id, transactionId: granted.transaction!.id, transactionType: "adjustment" });
    // The webhook body is the same Event in proto3 JSON: int64 as strings, camelCase names.
    const view = await new Events(harness().sequelize).get(e!.id);
    const json = JSON.parse(eventJson(view));
    expect(json).to.deep.include({ id: e!.id, type: "credits.granted", accountId: account });
    expect(json.creditsGranted).to.include({ amount: "700", balanceAfter: "700", lotId: granted.lot!.id });
    expect(fromJsonString(EventSchema, eventJson(view)).data.case).to.equal("creditsGranted");
  });

  it("fires balance.low once per threshold and balance.depleted once under 100 racing deductions on both paths", async () => {
    const account = newAccount("evt-race");
    await grant(account, 1000n);
    expect((await alerts().setBalanceAlerts({ accountId: account, thresholds: [100n, 500n] })).thresholds).to.deep.equal([100n, 500n]);
    const results = await Promise.allSettled(Array.from({ length: 100 }, (_, i) => deduct(account, 10n, i % 2 ? "grpc-http2" : "connect-json-http1")));
    expect(results.filter((r) => r.status === "fulfilled")).to.have.length(100);
    expect((await credits().getBalance({ accountId: account })).balance!.balance).to.equal(0n);
    const low = await waitForEvents(account, ["balance.low"], 2);
    expect(low.map((e) => (e.data.value as { threshold: bigint }).threshold).sort()).to.deep.equal([100n, 500n]);
    for (const e of low) {
      const v = e.data.value as { threshold: bigint; previousBalance: bigint; balance: bigint };
      expect(v.previousBalance >= v.threshold && v.balance < v.threshold, `crossed ${v.threshold}: ${v.previousBalance} -> ${v.balance}`).to.equal(true);
    }
    const depleted = await waitForEvents(account, ["balance.depleted"], 1);
    expect(depleted).to.have.length(1);
    await sleep(300);
    expect(await eventsOf(account, ["balance.low", "balance.depleted"])).to.have.length(3);
  });

  it("re-arms a threshold once the balance is back at or above it, and fires each threshold crossed by one deduction", async () => {
    const account = newAccount("evt-rearm");
    await grant(account, 1000n);
    await alerts().setBalanceAlerts({ accountId: account, thresholds: [900n, 800n, 300n] });
    await deduct(account, 250n); // 1000 -> 750: crosses 900 and 800 at once
    await deduct(account, 100n); // 750 -> 650: crosses nothing
    await grant(account, 300n); // 950: back above 900 and 800
    await deduct(account, 100n); // 850: crosses 900 again
    const low = await waitForEvents(account, ["balance.low"], 3);
    expect(low.map((e) => (e.data.value as { threshold: bigint }).threshold)).to.deep.equal([900n, 800n, 900n]);
    expect(await eventsOf(account, ["balance.depleted"])).to.have.length(0);
    expect((await alerts().getBalanceAlerts({ accountId: account })).thresholds).to.deep.equal([300n, 800n, 900n]);
  });

  it("writes nothing for a change that did not commit (a refused deduction, a rolled-back transaction)", async () => {
    const account = newAccount("evt-none");
    await grant(account, 100n);
    await alerts().setBalanceAlerts({ accountId: account, thresholds: [50n] });
    await expectError(deduct(account, 150n), Code.FailedPrecondition);
    const sequelize = harness().sequelize;
    await sequelize
      .transaction(async (t) => {
        await sequelize.query(`UPDATE billing_accounts SET balance = 0 WHERE account_id = $1`, { bind: [account], transaction: t });
        const [row] = (await sequelize.query(`SELECT count(*)::int AS n FROM billing_events WHERE account_id = $1 AND type LIKE 'balance.%'`, {
          bind: [account],
          transaction: t,
          type: "SELECT" as never,
        })) as unknown as { n: number }[];
        expect(row!.n, "the trigger wrote the events inside the transaction").to.equal(2);
        throw new Error("roll back");
      })
      .catch((err: Error) => expect(err.message).to.equal("roll back"));
    await sleep(200);
    expect((await eventsOf(account)).map((e) => e.type)).to.deep.equal(["credits.granted"]);
  });

  it("writes credits.expired when a lot expires, and credit_lot.expiring_soon once ahead of it", async () => {
    const account = newAccount("evt-exp");
    const lot = (await grant(account, 40n, { expiresAt: new Date(Date.now() + 1500) })).lot!;
    const soon = await waitForEvents(account, ["credit_lot.expiring_soon"], 1);
    expect(soon).to.have.length(1);
    expect(soon[0]!.data.value).to.include({ lotId: lot.id, remaining: 40n });
    const expired = await waitForEvents(account, ["credits.expired"], 1);
    expect(expired[0]!.data.value).to.include({ lotId: lot.id, amount: 40n, balanceAfter: 0n });
    await sleep(1200); // more sweeps
    expect(await eventsOf(account, ["credit_lot.expiring_soon"])).to.have.length(1);
  });

  it("writes reservation.expired once when a hold runs out uncommitted, and nothing for a released one", async () => {
    const account = newAccount("evt-hold");
    await grant(account, 100n);
    const { reservation } = await credits().reserveCredits({ accountId: account, operationType: "linking", credits: 30n, ttl: { seconds: 1n, nanos: 0 }, idempotencyKey: key() });
    const released = (await credits().reserveCredits({ accountId: account, operationType: "linking", credits: 5n, ttl: { seconds: 1n, nanos: 0 }, idempotencyKey: key() })).reservation!;
    await credits().releaseReservation({ reservationId: released.id });
    const expired = await waitForEvents(account, ["reservation.expired"], 1);
    expect(expired.map((e) => e.data.value)).to.deep.equal([{ $typeName: "billing.v1.ReservationExpired", reservationId: reservation!.id, credits: 30n }]);
    await sleep(1000);
    expect(await eventsOf(account, ["reservation.expired"])).to.have.length(1);
  });

  it("writes invoice.finalized, payment.succeeded, invoice.paid and payment.refunded (with the refunded amount) for a package purchase", async () => {
    const account = newAccount("evt-pay");
    const { invoice, payment } = await pendingPackagePayment(account, 300n);
    await client(PaymentService, TOKENS.admin).approvePayment({ paymentId: payment.id });
    await client(PaymentService, TOKENS.admin).refundPayment({ paymentId: payment.id, reason: "part", amount: "5.00", idempotencyKey: key() });
    const all = await waitForEvents(account, [], 5);
    expect(all.map((e) => e.type).sort()).to.deep.equal(["credits.granted", "invoice.finalized", "invoice.paid", "payment.refunded", "payment.succeeded"]);
    expect(all[0]!.type, "the purchase's invoice comes first").to.equal("invoice.finalized");
    expect(all[4]!.type, "the refund comes last").to.equal("payment.refunded");
    const byType = new Map(all.map((e) => [e.type, e]));
    expect(byType.get("invoice.finalized")!.data.value).to.include({ invoiceId: invoice.id, invoiceNumber: invoice.invoiceNumber, total: invoice.total, currency: invoice.currency, status: "PENDING" });
    expect(byType.get("invoice.paid")!.data.value).to.include({ invoiceId: invoice.id, status: "PAID" });
    expect(byType.get("payment.succeeded")!.data.value).to.include({ paymentId: payment.id, invoiceId: invoice.id, amount: payment.amount, status: "succeeded" });
    expect(byType.get("payment.refunded")!.data.value).to.include({ paymentId: payment.id, refundAmount: "5.00", amountRefunded: "5.00", status: "partially_refunded" });
    expect(byType.get("credits.granted")!.data.value).to.include({ amount: 300n, paymentId: payment.id });
  });

  it("pages in commit order with a cursor that later returns only newer events", async () => {
    const account = newAccount("evt-page");
    for (let i = 0; i < 5; i++) await grant(account, BigInt(10 + i));
    await waitForEvents(account, [], 5);
    const first = await events().listEvents({ accountId: account, pageSize: 2 });
    expect(first.events).to.have.length(2);
    expect(first.nextPageToken).to.not.equal("");
    const second = await events().listEvents({ accountId: account, pageSize: 2, pageToken: first.nextPageToken });
    const third = await events().listEvents({ accountId: account, pageSize: 2, pageToken: second.nextPageToken });
    expect(third.events, JSON.stringify([...first.events, ...second.events, ...third.events].map((e) => [e.type, e.id, e.createdAt?.seconds.toString()]))).to.have.length(1);
    expect(third.nextPageToken).to.equal("");
    const amounts = [...first.events, ...second.events, ...third.events].map((e) => (e.data.value as { amount: bigint }).amount);
    expect(amounts).to.deep.equal([10n, 11n, 12n, 13n, 14n]);
    const idle = await events().listEvents({ accountId: account, pageToken: third.cursor });
    expect(idle.events).to.have.length(0);
    expect(idle.cursor).to.equal(third.cursor);
    await grant(account, 99n);
    const later = await waitFor(async () => (await events().listEvents({ accountId: account, pageToken: third.cursor })).events, (x) => x.length > 0);
    expect(later.map((e) => (e.data.value as { amount: bigint }).amount)).to.deep.equal([99n]);
  });

  it("refuses bad filters with the field named, and another account's events to account keys", async () => {
    let err = await expectError(events().listEvents({ types: ["balance.low", "balance.lol"] }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["types[1]"]);
    err = await expectError(events().listEvents({ accountId: "x".repeat(256) }), Code.InvalidArgument);
    expect(badFields(err)).to.include("account_id");
    err = await expectError(events().listEvents({ pageToken: "garbage" }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["page_token"]);
    const other = await events().listEvents({ accountId: ACCOUNT_A, pageSize: 1 });
    err = await expectError(events().listEvents({ accountId: ACCOUNT_B, pageToken: other.cursor }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["page_token"]);
    err = await expectError(events().listEvents({ startTime: timestampFromDate(new Date(2026, 1, 2)), endTime: timestampFromDate(new Date(2026, 1, 1)) }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["end_time"]);
    err = await expectError(events(TOKENS.accountA).listEvents({ accountId: ACCOUNT_B }), Code.PermissionDenied);
    expect(errorReason(err)).to.equal("PERMISSION_DENIED");
    await expectError(events(TOKENS.accountA).listEvents({}), Code.PermissionDenied);
    await events(TOKENS.accountA).listEvents({ accountId: ACCOUNT_A });
    await expectError(alerts(TOKENS.accountA).setBalanceAlerts({ accountId: ACCOUNT_B, thresholds: [5n] }), Code.PermissionDenied);
  });

  it("refuses bad thresholds with the field named and keeps the old ones", async () => {
    const account = newAccount("evt-thr");
    await alerts().setBalanceAlerts({ accountId: account, thresholds: [10n] });
    let err = await expectError(alerts().setBalanceAlerts({ accountId: account, thresholds: [5n, 0n, 5n] }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["thresholds[1]", "thresholds[2]"]);
    err = await expectError(alerts().setBalanceAlerts({ accountId: account, thresholds: Array.from({ length: 11 }, (_, i) => BigInt(i + 1)) }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["thresholds"]);
    expect((await alerts().getBalanceAlerts({ accountId: account })).thresholds).to.deep.equal([10n]);
    expect((await alerts(TOKENS.accountA).setBalanceAlerts({ accountId: ACCOUNT_A, thresholds: [] })).thresholds).to.deep.equal([]);
  });

  it("serialises racing SetBalanceAlerts: each replaces the set whole, none fails, the watch bounds match the last", async () => {
    const account = newAccount("evt-thr-race");
    await grant(account, 1000n);
    const sets = Array.from({ length: 12 }, (_, i) => [BigInt(100 + i), BigInt(900 - i)]);
    const results = await Promise.allSettled(sets.map((thresholds) => alerts().setBalanceAlerts({ accountId: account, thresholds })));
    expect(results.filter((r) => r.status === "rejected")).to.deep.equal([]);
    const final = (await alerts().getBalanceAlerts({ accountId: account })).thresholds;
    expect(sets.map((x) => x.join())).to.include(final.join());
    const [row] = (await harness().sequelize.query(`SELECT watch_min::text AS lo, watch_max::text AS hi FROM billing_accounts WHERE account_id = $1`, {
      bind: [account],
      type: "SELECT" as never,
    })) as unknown as { lo: string; hi: string }[];
    expect([row!.lo, row!.hi]).to.deep.equal([final[0]!.toString(), final[1]!.toString()]);
  });

  it("streams events as they commit with WatchEvents, resumable by cursor", async () => {
    const account = newAccount("evt-watch");
    await grant(account, 500n);
    await alerts().setBalanceAlerts({ accountId: account, thresholds: [200n] });
    const abort = new AbortController();
    const stream = client(EventService, TOKENS.service, "grpc-http2").watchEvents({ accountId: account, types: ["balance.low", "balance.depleted"] }, { signal: abort.signal });
    const seen: Event[] = [];
    let lastCursor = "";
    const reading = (async () => {
      for await (const m of stream) {
        seen.push(m.event!);
        lastCursor = m.cursor;
        if (seen.length === 2) break;
      }
    })();
    await sleep(300);
    await deduct(account, 400n); // 500 -> 100: balance.low
    await deduct(account, 100n); // 100 -> 0: balance.depleted
    await Promise.race([reading, sleep(10_000)]);
    abort.abort();
    expect(seen.map((e) => e.type)).to.deep.equal(["balance.low", "balance.depleted"]);
    // Resuming after the last cursor: nothing newer yet; a grant (not watched) does not show.
    await grant(account, 1n);
    const resumed = await events().listEvents({ accountId: account, types: ["balance.low", "balance.depleted"], pageToken: lastCursor });
    expect(resumed.events).to.have.length(0);
    const err = await expectError(
      (async () => {
        for await (const _ of client(EventService, TOKENS.service).watchEvents({ accountId: account, types: ["nope"] })) break;
      })(),
      Code.InvalidArgument,
    );
    expect(badFields(err)).to.deep.equal(["types[0]"]);
  });
});

async function waitFor<T>(read: () => Promise<T>, done: (x: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const x = await read();
    if (done(x) || Date.now() > until) return x;
    await sleep(100);
  }
}
