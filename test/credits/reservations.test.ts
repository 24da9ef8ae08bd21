/**
 * AdjustCredits and reservations through the API, including racing holds and
 * expiry without anyone calling.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { CreditService, CreditTransactionType, ReservationStatus } from "../../gen/billing/v1/credit_service_pb.js";
import { TOKENS, badFields, client, expectError, harness, key, newAccount } from "../harness.js";
import { assertLedgerConsistent, ensureModel } from "./ledger.test.js";

const svc = () => client(CreditService, TOKENS.service);
const admin = () => client(CreditService, TOKENS.opsAdmin);

async function funded(amount: bigint) {
  const account = newAccount("res");
  await svc().grantCredits({ accountId: account, amount, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
  return account;
}

describe("CreditService adjustments", () => {
  it("adds and removes credits with an ADJUSTMENT that names the admin", async () => {
    const account = await funded(10n);
    const up = await admin().adjustCredits({ accountId: account, amount: 5n, reason: "goodwill", idempotencyKey: key() });
    expect(up.transaction).to.include({ type: CreditTransactionType.ADJUSTMENT, amount: 5n, balanceAfter: 15n, description: "goodwill" });
    expect(up.transaction?.metadata).to.deep.equal({ adjusted_by: "ops-ana" });
    const down = await admin().adjustCredits({ accountId: account, amount: -15n, reason: "correction", idempotencyKey: key() });
    expect(down.transaction).to.include({ amount: -15n, balanceAfter: 0n });
    expect(await assertLedgerConsistent(account)).to.equal(0n);
  });

  it("never takes a balance below zero", async () => {
    const account = await funded(10n);
    await expectError(admin().adjustCredits({ accountId: account, amount: -11n, reason: "too much", idempotencyKey: key() }), Code.FailedPrecondition, "INSUFFICIENT_CREDITS");
    expect(await assertLedgerConsistent(account)).to.equal(10n);
  });

  it("rejects zero, a missing reason and non-admin callers", async () => {
    const account = await funded(1n);
    const err = await expectError(admin().adjustCredits({ accountId: account, amount: 0n, reason: "", idempotencyKey: "" }), Code.InvalidArgument);
    expect(badFields(err)).to.have.members(["amount", "reason", "idempotency_key"]);
    await expectError(svc().adjustCredits({ accountId: account, amount: 1n, reason: "x", idempotencyKey: key() }), Code.PermissionDenied);
    await expectError(client(CreditService, TOKENS.accountA).adjustCredits({ accountId: "acct_a", amount: 1n, reason: "x", idempotencyKey: key() }), Code.PermissionDenied);
  });

  it("is idempotent", async () => {
    const account = await funded(0n + 1n);
    const req = { accountId: account, amount: 7n, reason: "retry me", idempotencyKey: key() };
    const [a, b] = await Promise.all([admin().adjustCredits(req), admin().adjustCredits(req)]);
    expect(a.transaction?.id).to.equal(b.transaction?.id);
    expect(await assertLedgerConsistent(account)).to.equal(8n);
  });
});

describe("CreditService reservations", () => {
  before(async () => {
    await ensureModel("gpt-4o-mini", { inputCostPer1m: "0.1500", outputCostPer1m: "0.6000" });
  });

  it("holds credits: available drops, balance does not", async () => {
    const account = await funded(100n);
    const res = await svc().reserveCredits({ accountId: account, operationType: "content", credits: 30n, idempotencyKey: key() });
    expect(res.reservation).to.include({ accountId: account, operationType: "content_generation", credits: 30n, status: ReservationStatus.ACTIVE });
    expect(res.balance).to.include({ balance: 100n, reserved: 30n, available: 70n });
    const bal = await svc().getBalance({ accountId: account });
    expect(bal.balance).to.include({ balance: 100n, reserved: 30n, available: 70n });
    await expectError(svc().deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 71n }, idempotencyKey: key() }), Code.FailedPrecondition, "INSUFFICIENT_CREDITS");
    await expectError(svc().reserveCredits({ accountId: account, operationType: "clustering", credits: 71n, idempotencyKey: key() }), Code.FailedPrecondition, "INSUFFICIENT_CREDITS");
  });

  it("commits the actual usage and frees the rest", async () => {
    const account = await funded(100n);
    const { reservation } = await svc().reserveCredits({ accountId: account, operationType: "content_generation", credits: 50n, idempotencyKey: key() });
    const res = await svc().commitReservation({
      reservationId: reservation!.id,
      usage: { tokensInput: 1500n, tokensOutput: 1500n, model: "gpt-4o-mini" },
      relatedObjectType: "task",
      relatedObjectId: "7",
      idempotencyKey: key(),
    });
    expect(res.reservation).to.include({ status: ReservationStatus.COMMITTED, creditsCommitted: 30n });
    expect(res.transaction).to.include({ amount: -30n, balanceAfter: 70n, type: CreditTransactionType.DEDUCTION });
    expect(res.usageLog).to.include({ creditsUsed: 30n, relatedObjectId: "7", costUsd: "0.0011" });
    expect(res.balance).to.include({ balance: 70n, reserved: 0n, available: 70n });
    await expectError(svc().releaseReservation({ reservationId: reservation!.id }), Code.FailedPrecondition, "INVALID_STATE_TRANSITION");
    await expectError(
      svc().commitReservation({ reservationId: reservation!.id, usage: { credits: 1n }, idempotencyKey: key() }),
      Code.FailedPrecondition,
      "INVALID_STATE_TRANSITION",
    );
    expect(await assertLedgerConsistent(account)).to.equal(70n);
  });

  it("commits more than was held only if the extra is available", async () => {
    const account = await funded(100n);
    const first = (await svc().reserveCredits({ accountId: account, operationType: "clustering", credits: 40n, idempotencyKey: key() })).reservation!;
    await svc().reserveCredits({ accountId: account, operationType: "clustering", credits: 50n, idempotencyKey: key() });
    // 100 balance, 90 held: the first hold may use its own 40 plus the 10 free.
    await expectError(svc().commitReservation({ reservationId: first.id, usage: { credits: 51n }, idempotencyKey: key() }), Code.FailedPrecondition, "INSUFFICIENT_CREDITS");
    const ok = await svc().commitReservation({ reservationId: first.id, usage: { credits: 50n }, idempotencyKey: key() });
    expect(ok.balance).to.include({ balance: 50n, reserved: 50n, available: 0n });
    expect(await assertLedgerConsistent(account)).to.equal(50n);
  });

  it("releases a hold, twice without error", async () => {
    const account = await funded(10n);
    const { reservation } = await svc().reserveCredits({ accountId: account, operationType: "linking", credits: 10n, idempotencyKey: key() });
    const a = await svc().releaseReservation({ reservationId: reservation!.id });
    expect(a.reservation?.status).to.equal(ReservationStatus.RELEASED);
    expect(a.balance).to.include({ available: 10n, reserved: 0n });
    const b = await svc().releaseReservation({ reservationId: reservation!.id });
    expect(b.reservation?.status).to.equal(ReservationStatus.RELEASED);
  });

  it("stops counting an expired hold without anyone calling", async () => {
    const account = await funded(10n);
    const { reservation } = await svc().reserveCredits({ accountId: account, operationType: "linking", credits: 10n, ttl: { seconds: 60n, nanos: 0 }, idempotencyKey: key() });
    expect((await svc().getBalance({ accountId: account })).balance?.available).to.equal(0n);
    await harness().sequelize.query(`UPDATE credit_reservations SET expires_at = now() - interval '1 second' WHERE id = $1`, { bind: [reservation!.id] });
    expect((await svc().getBalance({ accountId: account })).balance).to.include({ available: 10n, reserved: 0n });
    await expectError(svc().commitReservation({ reservationId: reservation!.id, usage: { credits: 1n }, idempotencyKey: key() }), Code.FailedPrecondition);
    const released = await svc().releaseReservation({ reservationId: reservation!.id });
    expect(released.reservation?.status).to.equal(ReservationStatus.EXPIRED);
  });

  it("rejects bad input and unknown reservations", async () => {
    const account = await funded(10n);
    let err = await expectError(svc().reserveCredits({ accountId: account, operationType: "x", credits: 0n, ttl: { seconds: 90000n, nanos: 0 }, idempotencyKey: "" }), Code.InvalidArgument);
    expect(badFields(err)).to.have.members(["operation_type", "credits", "ttl", "idempotency_key"]);
    err = await expectError(svc().commitReservation({ reservationId: "nope", usage: { credits: 1n }, idempotencyKey: key() }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["reservation_id"]);
    await expectError(svc().releaseReservation({ reservationId: "00000000-0000-4000-8000-000000000000" }), Code.NotFound);
    await expectError(client(CreditService, TOKENS.accountA).reserveCredits({ accountId: "acct_a", operationType: "linking", credits: 1n, idempotencyKey: key() }), Code.PermissionDenied);
  });

  it("racing holds never hold more than the balance; retried commits charge once", async () => {
    const account = await funded(100n);
    const results = await Promise.allSettled(
      Array.from({ length: 30 }, (_, i) => client(CreditService, TOKENS.service, i % 2 ? "grpc-http2" : "connect-json-http1").reserveCredits({ accountId: account, operationType: "clustering", credits: 7n, idempotencyKey: key() })),
    );
    const held = results.filter((r) => r.status === "fulfilled").map((r) => (r as PromiseFulfilledResult<{ reservation?: { id: string } }>).value.reservation!.id);
    expect(held).to.have.length(14); // 14 x 7 = 98 <= 100 < 105
    expect((await svc().getBalance({ accountId: account })).balance).to.include({ reserved: 98n, available: 2n });
    const commit = { reservationId: held[0]!, usage: { credits: 7n }, idempotencyKey: key() };
    const commits = await Promise.all(Array.from({ length: 8 }, () => svc().commitReservation(commit)));
    expect(new Set(commits.map((c) => c.transaction?.id)).size).to.equal(1);
    expect(await assertLedgerConsistent(account)).to.equal(93n);
  });
});
