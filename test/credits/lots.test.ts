/**
 * Credit lots through the API: every grant is a lot (category, priority,
 * effective and expiry times, who granted it), every debit draws from lots
 * in burn-down order and records its allocations, lots expire lazily, can be
 * listed and voided; and at all times balance = Σ lots' remaining = Σ ledger.
 */
import { toJson } from "@bufbuild/protobuf";
import { timestampFromDate, timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import {
  CreditLotCategory,
  CreditLotState,
  CreditService,
  CreditTransactionType,
  DeductCreditsResponseSchema,
  VoidCreditLotResponseSchema,
  type CreditLot,
  type CreditTransaction,
} from "../../gen/billing/v1/credit_service_pb.js";
import { ACCOUNT_A, ACCOUNT_B, PROTOCOLS, TOKENS, badFields, client, errorReason, expectError, harness, key, newAccount, type Protocol } from "../harness.js";

const admin = () => client(CreditService, TOKENS.admin);
const svc = (protocol: Protocol = "connect-json-http1") => client(CreditService, TOKENS.service, protocol);

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, ms)));
const at = (msFromNow: number) => new Date(Date.now() + msFromNow);

interface LotOptions {
  type?: CreditTransactionType;
  category?: CreditLotCategory;
  priority?: number;
  expiresAt?: Date;
  effectiveAt?: Date;
  description?: string;
  token?: string;
}

/** The transaction type that goes with a category when a test names none. */
function typeFor(category: CreditLotCategory | undefined): CreditTransactionType {
  if (category === CreditLotCategory.PAID) return CreditTransactionType.PURCHASE;
  if (category === CreditLotCategory.PLAN_ALLOWANCE) return CreditTransactionType.SUBSCRIPTION;
  return CreditTransactionType.ADJUSTMENT;
}

/** Grants `amount` credits as one lot (admin key unless told). */
async function grantLot(accountId: string, amount: bigint, o: LotOptions = {}) {
  return client(CreditService, o.token ?? TOKENS.admin).grantCredits({
    accountId,
    amount,
    type: o.type ?? typeFor(o.category),
    category: o.category ?? CreditLotCategory.UNSPECIFIED,
    description: o.description ?? "lot test",
    ...(o.priority !== undefined ? { priority: o.priority } : {}),
    ...(o.expiresAt ? { expiresAt: timestampFromDate(o.expiresAt) } : {}),
    ...(o.effectiveAt ? { effectiveAt: timestampFromDate(o.effectiveAt) } : {}),
    idempotencyKey: key(),
  });
}

/** Deducts an explicit number of credits. */
function deduct(accountId: string, credits: bigint, protocol: Protocol = "connect-json-http1", idempotencyKey = key()) {
  return svc(protocol).deductCredits({ accountId, operationType: "clustering", usage: { credits }, idempotencyKey });
}

/** Every lot of an account (all pages), newest first; no lot twice. */
async function allLots(accountId: string): Promise<CreditLot[]> {
  const out: CreditLot[] = [];
  let pageToken = "";
  do {
    const page = await svc().listCreditLots({ accountId, pageSize: 500, pageToken });
    out.push(...page.lots);
    pageToken = page.nextPageToken;
  } while (pageToken);
  expect(new Set(out.map((l) => l.id)).size, "no lot listed twice").to.equal(out.length);
  return out;
}

/** Every ledger entry of an account (all pages), in ledger order (ascending id). */
async function ledger(accountId: string): Promise<CreditTransaction[]> {
  const out: CreditTransaction[] = [];
  let pageToken = "";
  do {
    const page = await svc().listTransactions({ accountId, pageSize: 500, pageToken });
    out.push(...page.transactions);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return out.sort((a, b) => (BigInt(a.id) < BigInt(b.id) ? -1 : BigInt(a.id) > BigInt(b.id) ? 1 : 0));
}

function lotById(lots: CreditLot[], id: string): CreditLot {
  const lot = lots.find((l) => l.id === id);
  expect(lot, `lot ${id} is listed`).to.not.equal(undefined);
  return lot!;
}

/** [lot_id, amount] pairs of a transaction's allocations, for deep comparisons. */
const allocs = (t: CreditTransaction | undefined) => (t?.allocations ?? []).map((a) => [a.lotId, a.amount] as [string, bigint]);

const nanosOf = (t: Timestamp) => t.seconds * 1_000_000_000n + BigInt(t.nanos);

/** Rows an account has in the ledger, lots and usage logs, straight from the database. */
async function rowCounts(accountId: string): Promise<{ tx: number; lots: number; logs: number }> {
  const [row] = (await harness().sequelize.query(
    `SELECT (SELECT count(*) FROM credit_transactions WHERE account_id = $1) AS tx,
            (SELECT count(*) FROM credit_lots WHERE account_id = $1) AS lots,
            (SELECT count(*) FROM credit_usage_logs WHERE account_id = $1) AS logs`,
    { bind: [accountId], type: "SELECT" as never },
  )) as unknown as { tx: string; lots: string; logs: string }[];
  return { tx: Number(row!.tx), lots: Number(row!.lots), logs: Number(row!.logs) };
}

/**
 * The lot invariants of an account, through the API: balance (GetBalance) =
 * Σ remaining of its lots = Σ ledger amounts (and each balance_after the
 * running sum); every debit's allocations are positive, name lots of the
 * account and add up to -amount (a DEDUCTION has some); additions have none;
 * each lot's remaining = amount - Σ credits drawn from it, within [0, amount];
 * by_category adds up to the balance. Returns the balance.
 */
export async function assertLotInvariants(accountId: string): Promise<bigint> {
  const balance = (await svc().getBalance({ accountId })).balance!;
  const lots = await allLots(accountId);
  const txs = await ledger(accountId);
  const sumRemaining = lots.reduce((s, l) => s + l.remaining, 0n);
  let running = 0n;
  const drawn = new Map<string, bigint>();
  for (const t of txs) {
    running += t.amount;
    expect(t.balanceAfter, `balance_after of entry ${t.id} is the running sum`).to.equal(running);
    if (t.amount > 0n) {
      expect(t.allocations, `addition ${t.id} draws from no lot`).to.deep.equal([]);
      continue;
    }
    if (t.type === CreditTransactionType.DEDUCTION) expect(t.allocations.length, `DEDUCTION ${t.id} has allocations`).to.be.greaterThan(0);
    let sum = 0n;
    for (const a of t.allocations) {
      expect(a.amount > 0n, `allocation of entry ${t.id} is positive`).to.equal(true);
      lotById(lots, a.lotId);
      drawn.set(a.lotId, (drawn.get(a.lotId) ?? 0n) + a.amount);
      sum += a.amount;
    }
    expect(sum, `Σ allocations of entry ${t.id} (${CreditTransactionType[t.type]}) = -amount`).to.equal(-t.amount);
  }
  for (const l of lots) {
    expect(l.remaining >= 0n && l.remaining <= l.amount, `lot ${l.id}: 0 <= remaining ${l.remaining} <= amount ${l.amount}`).to.equal(true);
    expect(l.amount - (drawn.get(l.id) ?? 0n), `lot ${l.id}: remaining = amount - Σ drawn`).to.equal(l.remaining);
    if (l.state === CreditLotState.EXHAUSTED || l.state === CreditLotState.EXPIRED || l.state === CreditLotState.VOIDED) expect(l.remaining, `closed lot ${l.id} is empty`).to.equal(0n);
  }
  expect(balance.balance, "balance = Σ lots' remaining").to.equal(sumRemaining);
  expect(balance.balance, "balance = Σ ledger amounts").to.equal(running);
  expect(balance.byCategory.reduce((s, c) => s + c.amount, 0n), "Σ by_category = balance").to.equal(balance.balance);
  return balance.balance;
}

describe("Credit lots", () => {
  describe("GrantCredits creates a lot", () => {
    it("picks the category from the type when unset, with its default priority, and describes the grant", async () => {
      const account = newAccount("lot");
      const cases: [CreditTransactionType, CreditLotCategory, number][] = [
        [CreditTransactionType.PURCHASE, CreditLotCategory.PAID, 40],
        [CreditTransactionType.SUBSCRIPTION, CreditLotCategory.PLAN_ALLOWANCE, 20],
        [CreditTransactionType.REFUND, CreditLotCategory.ADJUSTMENT, 30],
        [CreditTransactionType.ADJUSTMENT, CreditLotCategory.ADJUSTMENT, 30],
      ];
      let amount = 10n;
      for (const [type, category, priority] of cases) {
        const res = await grantLot(account, amount, { type, description: `grant ${amount}` });
        const lot = res.lot!;
        expect(lot, CreditTransactionType[type]).to.not.equal(undefined);
        expect(lot).to.include({ accountId: account, category, priority, amount, remaining: amount, state: CreditLotState.ACTIVE, createdBy: "admin", description: `grant ${amount}`, paymentId: "" });
        expect(lot.id).to.be.a("string").and.not.equal("");
        expect(lot.transactionId).to.equal(res.transaction!.id);
        expect(lot.expiresAt, "never expires").to.equal(undefined);
        expect(lot.createdAt).to.not.equal(undefined);
        expect(res.transaction!.allocations, "an addition draws from no lot").to.deep.equal([]);
        amount += 1n;
      }
      const listed = await allLots(account);
      expect(listed).to.have.length(4);
      expect(await assertLotInvariants(account)).to.equal(10n + 11n + 12n + 13n);
    });

    it("gives each explicit category its default priority: PROMOTIONAL 10, PLAN_ALLOWANCE 20, ADJUSTMENT 30, PAID 40", async () => {
      const account = newAccount("lot");
      const defaults: [CreditLotCategory, number][] = [
        [CreditLotCategory.PROMOTIONAL, 10],
        [CreditLotCategory.PLAN_ALLOWANCE, 20],
        [CreditLotCategory.ADJUSTMENT, 30],
        [CreditLotCategory.PAID, 40],
      ];
      for (const [category, priority] of defaults) {
        // A type other than PURCHASE, so that every category is allowed.
        const type = category === CreditLotCategory.PAID ? CreditTransactionType.PURCHASE : CreditTransactionType.ADJUSTMENT;
        const lot = (await grantLot(account, 5n, { type, category })).lot!;
        expect(lot, CreditLotCategory[category]).to.include({ category, priority });
      }
      const fromSubscription = (await grantLot(account, 5n, { type: CreditTransactionType.SUBSCRIPTION, category: CreditLotCategory.PROMOTIONAL })).lot!;
      expect(fromSubscription).to.include({ category: CreditLotCategory.PROMOTIONAL, priority: 10 });
    });

    it("names the granting key in created_by", async () => {
      const account = newAccount("lot");
      expect((await grantLot(account, 1n, { token: TOKENS.admin })).lot?.createdBy).to.equal("admin");
      expect((await grantLot(account, 1n, { token: TOKENS.opsAdmin })).lot?.createdBy).to.equal("ops-ana");
      expect((await grantLot(account, 1n, { token: TOKENS.service })).lot?.createdBy).to.equal("service");
    });

    it("keeps an explicit category, priority, effective_at and expires_at", async () => {
      const account = newAccount("lot");
      const effectiveAt = at(60 * 60_000);
      const expiresAt = at(2 * 60 * 60_000);
      const res = await grantLot(account, 25n, { type: CreditTransactionType.SUBSCRIPTION, category: CreditLotCategory.PROMOTIONAL, priority: 7, effectiveAt, expiresAt });
      const lot = res.lot!;
      expect(lot).to.include({ category: CreditLotCategory.PROMOTIONAL, priority: 7, amount: 25n, remaining: 25n });
      expect(timestampMs(lot.effectiveAt!)).to.equal(effectiveAt.getTime());
      expect(timestampMs(lot.expiresAt!)).to.equal(expiresAt.getTime());
      const listed = lotById(await allLots(account), lot.id);
      expect(listed).to.include({ category: CreditLotCategory.PROMOTIONAL, priority: 7, transactionId: res.transaction!.id });
      expect(timestampMs(listed.effectiveAt!)).to.equal(effectiveAt.getTime());
      expect(timestampMs(listed.expiresAt!)).to.equal(expiresAt.getTime());

      // The bounds of priority are accepted; an effective_at already past means usable at once.
      const low = (await grantLot(account, 1n, { category: CreditLotCategory.ADJUSTMENT, priority: 0, effectiveAt: at(-60_000) })).lot!;
      expect(low).to.include({ priority: 0, state: CreditLotState.ACTIVE });
      expect((await grantLot(account, 1n, { category: CreditLotCategory.ADJUSTMENT, priority: 1000 })).lot?.priority).to.equal(1000);
      expect(await assertLotInvariants(account)).to.equal(27n);
    });

    it("rejects a non-PAID PURCHASE, a priority out of 0-1000 and a bad expiry, naming the field and writing nothing", async () => {
      const account = newAccount("lot");
      const refusals: [LotOptions, string][] = [
        [{ type: CreditTransactionType.PURCHASE, category: CreditLotCategory.PROMOTIONAL }, "category"],
        [{ type: CreditTransactionType.PURCHASE, category: CreditLotCategory.PLAN_ALLOWANCE }, "category"],
        [{ category: CreditLotCategory.PROMOTIONAL, priority: 1001 }, "priority"],
        [{ category: CreditLotCategory.PROMOTIONAL, priority: -1 }, "priority"],
        [{ category: CreditLotCategory.PROMOTIONAL, expiresAt: at(-60_000) }, "expires_at"],
        [{ category: CreditLotCategory.PROMOTIONAL, effectiveAt: at(2 * 60 * 60_000), expiresAt: at(60 * 60_000) }, "expires_at"],
      ];
      for (const [options, field] of refusals) {
        const err = await expectError(grantLot(account, 10n, options), Code.InvalidArgument);
        expect(badFields(err), JSON.stringify({ ...options, field })).to.include(field);
      }
      expect(await rowCounts(account)).to.deep.equal({ tx: 0, lots: 0, logs: 0 });
      expect((await svc().listCreditLots({ accountId: account })).lots).to.deep.equal([]);
      expect((await svc().getBalance({ accountId: account })).balance?.balance).to.equal(0n);
    });
  });

  describe("burn-down order", () => {
    it("spends promotional before plan allowance before paid, recording the allocations in that order", async () => {
      const account = newAccount("burn");
      const paid = (await grantLot(account, 100n, { category: CreditLotCategory.PAID })).lot!;
      const promo = (await grantLot(account, 50n, { category: CreditLotCategory.PROMOTIONAL, expiresAt: at(60 * 60_000) })).lot!;
      const plan = (await grantLot(account, 30n, { category: CreditLotCategory.PLAN_ALLOWANCE, expiresAt: at(2 * 60 * 60_000) })).lot!;

      const res = await deduct(account, 60n);
      expect(res.transaction).to.include({ type: CreditTransactionType.DEDUCTION, amount: -60n, balanceAfter: 120n });
      expect(allocs(res.transaction)).to.deep.equal([
        [promo.id, 50n],
        [plan.id, 10n],
      ]);
      const listed = await allLots(account);
      expect(listed.map((l) => l.id), "newest first").to.deep.equal([plan.id, promo.id, paid.id]);
      expect(lotById(listed, promo.id)).to.include({ remaining: 0n, state: CreditLotState.EXHAUSTED });
      expect(lotById(listed, plan.id)).to.include({ remaining: 20n, state: CreditLotState.ACTIVE });
      expect(lotById(listed, paid.id)).to.include({ remaining: 100n, state: CreditLotState.ACTIVE });
      // The ledger row holds the same allocations as the response.
      const stored = (await ledger(account)).find((t) => t.id === res.transaction!.id);
      expect(allocs(stored)).to.deep.equal(allocs(res.transaction));
      expect(await assertLotInvariants(account)).to.equal(120n);
    });

    it("within one priority burns the sooner expiry first, then never-expiring lots oldest first", async () => {
      const account = newAccount("burn");
      const olderNever = (await grantLot(account, 10n, { category: CreditLotCategory.ADJUSTMENT, priority: 25, description: "older, never expires" })).lot!;
      const laterExpiry = (await grantLot(account, 10n, { category: CreditLotCategory.ADJUSTMENT, priority: 25, expiresAt: at(2 * 60 * 60_000), description: "expires in 2h" })).lot!;
      const newerNever = (await grantLot(account, 10n, { category: CreditLotCategory.ADJUSTMENT, priority: 25, description: "newer, never expires" })).lot!;
      const soonerExpiry = (await grantLot(account, 10n, { category: CreditLotCategory.ADJUSTMENT, priority: 25, expiresAt: at(60 * 60_000), description: "expires in 1h" })).lot!;
      // A lower priority still comes first, a higher one last, whatever their expiry.
      const last = (await grantLot(account, 10n, { category: CreditLotCategory.ADJUSTMENT, priority: 26, expiresAt: at(30 * 60_000) })).lot!;
      const first = (await grantLot(account, 10n, { category: CreditLotCategory.ADJUSTMENT, priority: 24 })).lot!;

      const res = await deduct(account, 55n);
      expect(allocs(res.transaction)).to.deep.equal([
        [first.id, 10n],
        [soonerExpiry.id, 10n],
        [laterExpiry.id, 10n],
        [olderNever.id, 10n],
        [newerNever.id, 10n],
        [last.id, 5n],
      ]);
      expect(await assertLotInvariants(account)).to.equal(5n);
    });

    it("keeps every lot in order when 200 one-credit deductions race over mixed protocols", async function () {
      this.timeout(120_000);
      const account = newAccount("race");
      const promo = (await grantLot(account, 50n, { category: CreditLotCategory.PROMOTIONAL, expiresAt: at(60 * 60_000) })).lot!;
      const plan = (await grantLot(account, 70n, { category: CreditLotCategory.PLAN_ALLOWANCE, expiresAt: at(2 * 60 * 60_000) })).lot!;
      const paid = (await grantLot(account, 60n, { category: CreditLotCategory.PAID })).lot!;

      const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => deduct(account, 1n, PROTOCOLS[i % PROTOCOLS.length]!)));
      const ok = results.filter((r) => r.status === "fulfilled");
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
      expect(ok, "successful deductions").to.have.length(180);
      expect(failed, "refused deductions").to.have.length(20);
      for (const f of failed) {
        expect(f.reason, String(f.reason)).to.be.instanceOf(ConnectError);
        expect(Code[(f.reason as ConnectError).code]).to.equal(Code[Code.FailedPrecondition]);
        expect(errorReason(f.reason as ConnectError)).to.equal("INSUFFICIENT_CREDITS");
      }

      const lots = await allLots(account);
      for (const l of lots) expect(l, `lot ${l.id}`).to.include({ remaining: 0n, state: CreditLotState.EXHAUSTED });

      // In ledger order, no deduction draws from a later lot while an earlier one still has credits.
      const order = [promo.id, plan.id, paid.id];
      const left = new Map(lots.map((l) => [l.id, l.amount]));
      const deductions = (await ledger(account)).filter((t) => t.type === CreditTransactionType.DEDUCTION);
      expect(deductions).to.have.length(180);
      for (const t of deductions) {
        for (const a of t.allocations) {
          const rank = order.indexOf(a.lotId);
          expect(rank, `entry ${t.id} draws from a lot of the account`).to.be.at.least(0);
          for (const earlier of order.slice(0, rank)) {
            expect(left.get(earlier), `entry ${t.id} drew from lot #${rank} while lot #${order.indexOf(earlier)} had credits`).to.equal(0n);
          }
          left.set(a.lotId, left.get(a.lotId)! - a.amount);
        }
      }
      expect(await assertLotInvariants(account)).to.equal(0n);
    });

    it("answers an idempotent retry of a deduction with the identical response, allocations included", async () => {
      const account = newAccount("idem");
      await grantLot(account, 5n, { category: CreditLotCategory.PROMOTIONAL });
      await grantLot(account, 50n, { category: CreditLotCategory.PAID });
      const idempotencyKey = key();
      const first = await deduct(account, 8n, "connect-json-http1", idempotencyKey);
      expect(first.transaction?.allocations).to.have.length(2);
      const counts = await rowCounts(account);
      const again = await deduct(account, 8n, "grpc-http2", idempotencyKey);
      expect(toJson(DeductCreditsResponseSchema, again)).to.deep.equal(toJson(DeductCreditsResponseSchema, first));
      expect(await rowCounts(account)).to.deep.equal(counts);
      expect(await assertLotInvariants(account)).to.equal(47n);
    });
  });

  describe("GetBalance", () => {
    it("breaks the balance down by category and names the next expiry", async () => {
      const account = newAccount("bal");
      const promoExpiry = at(60 * 60_000);
      const planExpiry = at(2 * 60 * 60_000);
      await grantLot(account, 100n, { category: CreditLotCategory.PAID });
      await grantLot(account, 50n, { category: CreditLotCategory.PROMOTIONAL, expiresAt: promoExpiry });
      await grantLot(account, 30n, { category: CreditLotCategory.PLAN_ALLOWANCE, expiresAt: planExpiry });

      let b = (await svc().getBalance({ accountId: account })).balance!;
      expect(b).to.include({ balance: 180n, available: 180n, reserved: 0n, nextExpiringAmount: 50n });
      expect(timestampMs(b.nextExpiresAt!)).to.equal(promoExpiry.getTime());
      const byCategory = (x: typeof b) => x.byCategory.map((c) => [c.category, c.amount]).sort((p, q) => Number(p[0]) - Number(q[0]));
      expect(byCategory(b)).to.deep.equal([
        [CreditLotCategory.PAID, 100n],
        [CreditLotCategory.PROMOTIONAL, 50n],
        [CreditLotCategory.PLAN_ALLOWANCE, 30n],
      ]);

      // Spending the promotional lot: its category disappears, the plan allowance expires next.
      await deduct(account, 55n);
      b = (await svc().getBalance({ accountId: account })).balance!;
      expect(b).to.include({ balance: 125n, nextExpiringAmount: 25n });
      expect(timestampMs(b.nextExpiresAt!)).to.equal(planExpiry.getTime());
      expect(byCategory(b)).to.deep.equal([
        [CreditLotCategory.PAID, 100n],
        [CreditLotCategory.PLAN_ALLOWANCE, 25n],
      ]);

      // Nothing left expires: no next expiry.
      await deduct(account, 25n);
      b = (await svc().getBalance({ accountId: account })).balance!;
      expect(b).to.include({ balance: 100n, nextExpiringAmount: 0n });
      expect(b.nextExpiresAt).to.equal(undefined);
      expect(byCategory(b)).to.deep.equal([[CreditLotCategory.PAID, 100n]]);
      expect(await assertLotInvariants(account)).to.equal(100n);
    });

    it("counts a PENDING lot in the balance but not in available, and does not spend it", async () => {
      const account = newAccount("pend");
      await grantLot(account, 10n, { category: CreditLotCategory.PAID });
      const res = await grantLot(account, 40n, { category: CreditLotCategory.PAID, effectiveAt: at(60 * 60_000) });
      expect(res.lot?.state).to.equal(CreditLotState.PENDING);
      expect(res.balance).to.include({ balance: 50n, available: 10n });

      const b = (await svc().getBalance({ accountId: account })).balance!;
      expect(b).to.include({ balance: 50n, reserved: 0n, available: 10n });
      expect(lotById(await allLots(account), res.lot!.id)).to.include({ state: CreditLotState.PENDING, remaining: 40n });

      const counts = await rowCounts(account);
      await expectError(deduct(account, 20n), Code.FailedPrecondition, "INSUFFICIENT_CREDITS");
      expect(await rowCounts(account)).to.deep.equal(counts);
      // What is effective can be spent, and only from the effective lot.
      const spent = await deduct(account, 10n);
      expect(spent.transaction?.allocations.map((a) => a.lotId)).to.not.include(res.lot!.id);
      expect(spent.balance).to.include({ balance: 40n, available: 0n });
      expect(lotById(await allLots(account), res.lot!.id)).to.include({ state: CreditLotState.PENDING, remaining: 40n });
      expect(await assertLotInvariants(account)).to.equal(40n);
    });
  });

  describe("expiry", () => {
    it("expires a lot lazily at expires_at with an EXPIRATION entry drawing what was left", async function () {
      this.timeout(20_000);
      const account = newAccount("exp");
      const expiresAt = at(1_500);
      const promo = (await grantLot(account, 40n, { category: CreditLotCategory.PROMOTIONAL, expiresAt })).lot!;
      await grantLot(account, 10n, { category: CreditLotCategory.PAID });
      expect((await svc().getBalance({ accountId: account })).balance?.balance).to.equal(50n);
      await sleep(expiresAt.getTime() - Date.now() + 300);

      const b = (await svc().getBalance({ accountId: account })).balance!;
      expect(b).to.include({ balance: 10n, available: 10n, nextExpiringAmount: 0n });
      const expirations = (await svc().listTransactions({ accountId: account, types: [CreditTransactionType.EXPIRATION] })).transactions;
      expect(expirations).to.have.length(1);
      expect(expirations[0]).to.include({ type: CreditTransactionType.EXPIRATION, amount: -40n, balanceAfter: 10n });
      expect(allocs(expirations[0])).to.deep.equal([[promo.id, 40n]]);
      expect(lotById(await allLots(account), promo.id)).to.include({ state: CreditLotState.EXPIRED, remaining: 0n });
      expect(await assertLotInvariants(account)).to.equal(10n);
      // Reading again writes nothing more.
      expect((await svc().listTransactions({ accountId: account, types: [CreditTransactionType.EXPIRATION] })).transactions).to.have.length(1);
    });

    it("never lets deductions racing an expiry take more than the lot held, nor spend it after expires_at", async function () {
      this.timeout(30_000);
      const account = newAccount("exprace");
      await grantLot(account, 1_000n, { category: CreditLotCategory.PAID });
      const expiresAt = at(1_200);
      const promo = (await grantLot(account, 20n, { category: CreditLotCategory.PROMOTIONAL, expiresAt })).lot!;

      // One-credit deductions every ~50 ms, from ~600 ms before the expiry to ~600 ms after it.
      await sleep(expiresAt.getTime() - 600 - Date.now());
      const calls: Promise<unknown>[] = [];
      let i = 0;
      while (Date.now() < expiresAt.getTime() + 600) {
        calls.push(deduct(account, 1n, PROTOCOLS[i++ % PROTOCOLS.length]!));
        await sleep(50);
      }
      const results = await Promise.allSettled(calls);
      expect(results.filter((r) => r.status === "rejected").map((r) => String((r as PromiseRejectedResult).reason)), "every deduction fits the paid lot").to.deep.equal([]);
      // Make sure the expiry has been applied.
      await svc().getBalance({ accountId: account });

      const txs = await ledger(account);
      let spentFromPromo = 0n;
      let expiredFromPromo = 0n;
      const expiry = txs.filter((t) => t.type === CreditTransactionType.EXPIRATION);
      for (const t of txs) {
        for (const a of t.allocations) {
          if (a.lotId !== promo.id) continue;
          if (t.type === CreditTransactionType.DEDUCTION) {
            spentFromPromo += a.amount;
            expect(nanosOf(t.createdAt!) < BigInt(expiresAt.getTime()) * 1_000_000n, `deduction ${t.id} drew from the lot before it expired`).to.equal(true);
            for (const e of expiry) expect(BigInt(t.id) < BigInt(e.id), `deduction ${t.id} drew from the lot after its EXPIRATION entry ${e.id}`).to.equal(true);
          } else if (t.type === CreditTransactionType.EXPIRATION) {
            expiredFromPromo += a.amount;
          } else {
            expect.fail(`unexpected ${CreditTransactionType[t.type]} entry ${t.id} drawing from the lot`);
          }
        }
      }
      expect(spentFromPromo + expiredFromPromo, `spent ${spentFromPromo} + expired ${expiredFromPromo}`).to.equal(20n);
      const lot = lotById(await allLots(account), promo.id);
      expect(lot.remaining).to.equal(0n);
      expect(lot.state).to.equal(expiredFromPromo > 0n ? CreditLotState.EXPIRED : CreditLotState.EXHAUSTED);
      expect(await assertLotInvariants(account)).to.equal(1_020n - BigInt(calls.length) - expiredFromPromo);
    });
  });

  describe("ListCreditLots", () => {
    it("lists newest first and pages with next_page_token without duplicates", async () => {
      const account = newAccount("list");
      const granted: string[] = [];
      for (let n = 1n; n <= 5n; n++) granted.push((await grantLot(account, n, { category: CreditLotCategory.PROMOTIONAL })).lot!.id);
      const pages: string[][] = [];
      let pageToken = "";
      do {
        const page = await svc().listCreditLots({ accountId: account, pageSize: 2, pageToken });
        pages.push(page.lots.map((l) => l.id));
        pageToken = page.nextPageToken;
        expect(pages.length, "pagination ends").to.be.at.most(5);
      } while (pageToken);
      expect(pages.map((p) => p.length)).to.deep.equal([2, 2, 1]);
      expect(pages.flat()).to.deep.equal([...granted].reverse());
    });

    it("filters by categories and by states (ACTIVE, EXHAUSTED, EXPIRED, VOIDED, PENDING)", async function () {
      this.timeout(20_000);
      const account = newAccount("filt");
      const exhausted = (await grantLot(account, 5n, { category: CreditLotCategory.PROMOTIONAL })).lot!;
      await deduct(account, 5n);
      const active = (await grantLot(account, 10n, { category: CreditLotCategory.PAID })).lot!;
      const voided = (await grantLot(account, 7n, { category: CreditLotCategory.ADJUSTMENT })).lot!;
      await admin().voidCreditLot({ lotId: voided.id, reason: "test", idempotencyKey: key() });
      const pending = (await grantLot(account, 4n, { category: CreditLotCategory.PLAN_ALLOWANCE, effectiveAt: at(60 * 60_000) })).lot!;
      const expiresAt = at(1_000);
      const expired = (await grantLot(account, 3n, { category: CreditLotCategory.PROMOTIONAL, priority: 90, expiresAt })).lot!;
      await sleep(expiresAt.getTime() - Date.now() + 300);

      const ids = async (req: { categories?: CreditLotCategory[]; states?: CreditLotState[] }) => (await svc().listCreditLots({ accountId: account, ...req })).lots.map((l) => l.id);
      expect(await ids({})).to.deep.equal([expired.id, pending.id, voided.id, active.id, exhausted.id]);
      expect(await ids({ states: [CreditLotState.ACTIVE] })).to.deep.equal([active.id]);
      expect(await ids({ states: [CreditLotState.EXHAUSTED] })).to.deep.equal([exhausted.id]);
      expect(await ids({ states: [CreditLotState.EXPIRED] })).to.deep.equal([expired.id]);
      expect(await ids({ states: [CreditLotState.VOIDED] })).to.deep.equal([voided.id]);
      expect(await ids({ states: [CreditLotState.PENDING] })).to.deep.equal([pending.id]);
      expect(await ids({ states: [CreditLotState.ACTIVE, CreditLotState.PENDING] })).to.deep.equal([pending.id, active.id]);
      expect(await ids({ categories: [CreditLotCategory.PROMOTIONAL] })).to.deep.equal([expired.id, exhausted.id]);
      expect(await ids({ categories: [CreditLotCategory.PAID, CreditLotCategory.PLAN_ALLOWANCE] })).to.deep.equal([pending.id, active.id]);
      expect(await ids({ categories: [CreditLotCategory.PROMOTIONAL], states: [CreditLotState.EXPIRED] })).to.deep.equal([expired.id]);
      expect(await ids({ categories: [CreditLotCategory.ADJUSTMENT], states: [CreditLotState.ACTIVE] })).to.deep.equal([]);
      // Each listed lot reports the state it was filtered by.
      const states = new Map((await svc().listCreditLots({ accountId: account })).lots.map((l) => [l.id, l.state]));
      expect([exhausted.id, active.id, voided.id, pending.id, expired.id].map((id) => states.get(id))).to.deep.equal([
        CreditLotState.EXHAUSTED,
        CreditLotState.ACTIVE,
        CreditLotState.VOIDED,
        CreditLotState.PENDING,
        CreditLotState.EXPIRED,
      ]);
      expect(await assertLotInvariants(account)).to.equal(14n);
    });

    it("lets an account key read its own lots only", async () => {
      const mine = (await grantLot(ACCOUNT_A, 3n, { category: CreditLotCategory.PROMOTIONAL })).lot!;
      const own = await client(CreditService, TOKENS.accountA).listCreditLots({ accountId: ACCOUNT_A, categories: [CreditLotCategory.PROMOTIONAL] });
      expect(own.lots.map((l) => l.id)).to.include(mine.id);
      for (const l of own.lots) expect(l.accountId).to.equal(ACCOUNT_A);
      await expectError(client(CreditService, TOKENS.accountA).listCreditLots({ accountId: ACCOUNT_B }), Code.PermissionDenied);
      await expectError(client(CreditService, TOKENS.accountB).listCreditLots({ accountId: ACCOUNT_A }), Code.PermissionDenied);
    });

    it("rejects UNSPECIFIED in the category and state filters", async () => {
      const account = newAccount("list");
      let err = await expectError(svc().listCreditLots({ accountId: account, categories: [CreditLotCategory.UNSPECIFIED] }), Code.InvalidArgument);
      expect(badFields(err).some((f) => f.startsWith("categories")), badFields(err).join()).to.equal(true);
      err = await expectError(svc().listCreditLots({ accountId: account, states: [CreditLotState.ACTIVE, CreditLotState.UNSPECIFIED] }), Code.InvalidArgument);
      expect(badFields(err).some((f) => f.startsWith("states")), badFields(err).join()).to.equal(true);
    });
  });

  describe("VoidCreditLot", () => {
    it("is admin only", async () => {
      const lot = (await grantLot(ACCOUNT_A, 2n, { category: CreditLotCategory.PROMOTIONAL })).lot!;
      await expectError(svc().voidCreditLot({ lotId: lot.id, reason: "x", idempotencyKey: key() }), Code.PermissionDenied);
      await expectError(client(CreditService, TOKENS.accountA).voidCreditLot({ lotId: lot.id, reason: "x", idempotencyKey: key() }), Code.PermissionDenied);
      const listed = (await svc().listCreditLots({ accountId: ACCOUNT_A, states: [CreditLotState.ACTIVE] })).lots.find((l) => l.id === lot.id);
      expect(listed).to.include({ remaining: 2n, state: CreditLotState.ACTIVE });
    });

    it("voids what is left of an ACTIVE lot with a VOID entry, once per key, and refuses a second void", async () => {
      const account = newAccount("void");
      await grantLot(account, 100n, { category: CreditLotCategory.PAID });
      const lot = (await grantLot(account, 50n, { category: CreditLotCategory.PROMOTIONAL })).lot!;
      await deduct(account, 20n);
      expect((await svc().getBalance({ accountId: account })).balance?.balance).to.equal(130n);

      const req = { lotId: lot.id, reason: "campaign abuse", idempotencyKey: key() };
      const res = await client(CreditService, TOKENS.opsAdmin).voidCreditLot(req);
      expect(res.lot).to.include({ id: lot.id, state: CreditLotState.VOIDED, remaining: 0n, amount: 50n });
      expect(res.transaction).to.include({ type: CreditTransactionType.VOID, amount: -30n, balanceAfter: 100n, accountId: account });
      expect(allocs(res.transaction)).to.deep.equal([[lot.id, 30n]]);
      expect((await svc().getBalance({ accountId: account })).balance).to.include({ balance: 100n, available: 100n });
      expect(lotById(await allLots(account), lot.id)).to.include({ state: CreditLotState.VOIDED, remaining: 0n });

      const counts = await rowCounts(account);
      const retry = await client(CreditService, TOKENS.opsAdmin).voidCreditLot(req);
      expect(toJson(VoidCreditLotResponseSchema, retry)).to.deep.equal(toJson(VoidCreditLotResponseSchema, res));
      expect(await rowCounts(account)).to.deep.equal(counts);

      await expectError(admin().voidCreditLot({ ...req, idempotencyKey: key() }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
      expect(await rowCounts(account)).to.deep.equal(counts);
      expect(await assertLotInvariants(account)).to.equal(100n);
    });

    it("refuses an unknown lot (NOT_FOUND) and a malformed lot_id (INVALID_ARGUMENT)", async () => {
      await expectError(admin().voidCreditLot({ lotId: randomUUID(), reason: "x", idempotencyKey: key() }), Code.NotFound);
      const err = await expectError(admin().voidCreditLot({ lotId: "not-a-lot", reason: "x", idempotencyKey: key() }), Code.InvalidArgument);
      expect(badFields(err)).to.include("lot_id");
    });
  });

  describe("other debits draw from lots", () => {
    it("takes a negative AdjustCredits from lots in burn order, and makes a positive one an ADJUSTMENT lot", async () => {
      const account = newAccount("adj");
      const paid = (await grantLot(account, 10n, { category: CreditLotCategory.PAID })).lot!;
      const plan = (await grantLot(account, 10n, { category: CreditLotCategory.PLAN_ALLOWANCE })).lot!;
      const promo = (await grantLot(account, 10n, { category: CreditLotCategory.PROMOTIONAL, expiresAt: at(60 * 60_000) })).lot!;

      const down = await client(CreditService, TOKENS.opsAdmin).adjustCredits({ accountId: account, amount: -25n, reason: "correction", idempotencyKey: key() });
      expect(down.transaction).to.include({ type: CreditTransactionType.ADJUSTMENT, amount: -25n, balanceAfter: 5n });
      expect(allocs(down.transaction)).to.deep.equal([
        [promo.id, 10n],
        [plan.id, 10n],
        [paid.id, 5n],
      ]);

      const up = await client(CreditService, TOKENS.opsAdmin).adjustCredits({ accountId: account, amount: 7n, reason: "goodwill", idempotencyKey: key() });
      expect(up.transaction?.allocations).to.deep.equal([]);
      const created = (await allLots(account)).find((l) => l.transactionId === up.transaction!.id);
      expect(created, "the positive adjustment created a lot").to.not.equal(undefined);
      expect(created).to.include({ category: CreditLotCategory.ADJUSTMENT, priority: 30, amount: 7n, remaining: 7n, state: CreditLotState.ACTIVE, createdBy: "ops-ana" });
      expect(await assertLotInvariants(account)).to.equal(12n);
    });

    it("commits a reservation from lots in burn-down order", async () => {
      const account = newAccount("resv");
      const paid = (await grantLot(account, 100n, { category: CreditLotCategory.PAID })).lot!;
      const promo = (await grantLot(account, 10n, { category: CreditLotCategory.PROMOTIONAL, expiresAt: at(60 * 60_000) })).lot!;
      const { reservation } = await svc().reserveCredits({ accountId: account, operationType: "clustering", credits: 30n, idempotencyKey: key() });
      const res = await svc().commitReservation({ reservationId: reservation!.id, usage: { credits: 25n }, idempotencyKey: key() });
      expect(res.transaction).to.include({ type: CreditTransactionType.DEDUCTION, amount: -25n, balanceAfter: 85n });
      expect(allocs(res.transaction)).to.deep.equal([
        [promo.id, 10n],
        [paid.id, 15n],
      ]);
      expect(res.balance).to.include({ balance: 85n, reserved: 0n, available: 85n });
      expect(await assertLotInvariants(account)).to.equal(85n);
    });
  });
});
