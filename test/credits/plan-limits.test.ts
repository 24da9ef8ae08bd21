/**
 * Plan limits through the API: periods, all-or-nothing consumption (also
 * under racing consumers), remaining and percent used, new periods.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { CreditService, PlanLimitType } from "../../gen/billing/v1/credit_service_pb.js";
import { TOKENS, badFields, client, errorReason, expectError, key, newAccount } from "../harness.js";

const svc = () => client(CreditService, TOKENS.service);

function day(offset: number) {
  const d = new Date(Date.now() + offset * 86_400_000);
  return { year: d.getUTCFullYear(), month: d.getUTCMonth() + 1, day: d.getUTCDate() };
}

describe("CreditService plan limits", () => {
  it("sets limits for a period and reports remaining and percent used", async () => {
    const account = newAccount("plan");
    const set = await svc().setPlanLimits({
      accountId: account,
      periodStart: day(-10),
      periodEnd: day(20),
      limits: [
        { limitType: PlanLimitType.CONTENT_WORDS, limit: 10000n },
        { limitType: PlanLimitType.IMAGES_BASIC, limit: 3n },
      ],
    });
    expect(set.limits).to.have.length(2);
    const c = await svc().consumePlanLimit({ accountId: account, limitType: PlanLimitType.CONTENT_WORDS, amount: 2501n, idempotencyKey: key() });
    expect(c.limit).to.include({ limit: 10000n, amountUsed: 2501n, remaining: 7499n, percentUsed: 25 });
    const usage = await client(CreditService, TOKENS.accountA).getPlanLimitUsage({ accountId: "acct_a" });
    expect(usage.limits).to.be.an("array");
    const mine = await svc().getPlanLimitUsage({ accountId: account });
    expect(mine.limits.map((l) => l.limitType)).to.deep.equal([PlanLimitType.CONTENT_WORDS, PlanLimitType.IMAGES_BASIC]);
    expect(mine.limits[0]!.periodStart).to.include(day(-10));
  });

  it("refuses consumption past the limit with LIMIT_EXCEEDED and consumes nothing", async () => {
    const account = newAccount("plan");
    await svc().setPlanLimits({ accountId: account, periodStart: day(0), periodEnd: day(0), limits: [{ limitType: PlanLimitType.IMAGES_PREMIUM, limit: 5n }] });
    await svc().consumePlanLimit({ accountId: account, limitType: PlanLimitType.IMAGES_PREMIUM, amount: 4n, idempotencyKey: key() });
    const err = await expectError(svc().consumePlanLimit({ accountId: account, limitType: PlanLimitType.IMAGES_PREMIUM, amount: 2n, idempotencyKey: key() }), Code.ResourceExhausted, "LIMIT_EXCEEDED");
    expect(err.rawMessage).to.include("1 remaining");
    const usage = await svc().getPlanLimitUsage({ accountId: account });
    expect(usage.limits[0]).to.include({ amountUsed: 4n, remaining: 1n, percentUsed: 80 });
  });

  it("is exact under racing consumers", async () => {
    const account = newAccount("plan");
    await svc().setPlanLimits({ accountId: account, periodStart: day(-1), periodEnd: day(1), limits: [{ limitType: PlanLimitType.IMAGE_PROMPTS, limit: 37n }] });
    const results = await Promise.allSettled(
      Array.from({ length: 60 }, (_, i) => client(CreditService, TOKENS.service, i % 2 ? "grpc-http2" : "connect-json-http1").consumePlanLimit({ accountId: account, limitType: PlanLimitType.IMAGE_PROMPTS, amount: 1n, idempotencyKey: key() })),
    );
    expect(results.filter((r) => r.status === "fulfilled")).to.have.length(37);
    for (const r of results) if (r.status === "rejected") expect(errorReason(r.reason)).to.equal("LIMIT_EXCEEDED");
    expect((await svc().getPlanLimitUsage({ accountId: account })).limits[0]).to.include({ amountUsed: 37n, remaining: 0n, percentUsed: 100 });
  });

  it("replays a retried consumption without consuming twice", async () => {
    const account = newAccount("plan");
    await svc().setPlanLimits({ accountId: account, periodStart: day(0), periodEnd: day(30), limits: [{ limitType: PlanLimitType.CONTENT_IDEAS, limit: 10n }] });
    const req = { accountId: account, limitType: PlanLimitType.CONTENT_IDEAS, amount: 3n, idempotencyKey: key() };
    await Promise.all([svc().consumePlanLimit(req), svc().consumePlanLimit(req), svc().consumePlanLimit(req)]);
    expect((await svc().getPlanLimitUsage({ accountId: account })).limits[0]?.amountUsed).to.equal(3n);
  });

  it("starts a new period from zero and keeps old periods readable", async () => {
    const account = newAccount("plan");
    await svc().setPlanLimits({ accountId: account, periodStart: day(-40), periodEnd: day(-11), limits: [{ limitType: PlanLimitType.CONTENT_IDEAS, limit: 10n }] });
    await svc().setPlanLimits({ accountId: account, periodStart: day(-10), periodEnd: day(19), limits: [{ limitType: PlanLimitType.CONTENT_IDEAS, limit: 10n }] });
    await svc().consumePlanLimit({ accountId: account, limitType: PlanLimitType.CONTENT_IDEAS, amount: 6n, idempotencyKey: key() });
    const now = await svc().getPlanLimitUsage({ accountId: account });
    expect(now.limits[0]).to.include({ amountUsed: 6n });
    const old = await svc().getPlanLimitUsage({ accountId: account, date: day(-20) });
    expect(old.limits[0]).to.include({ amountUsed: 0n, limit: 10n });
    // Changing the current period's allowance keeps its usage.
    await svc().setPlanLimits({ accountId: account, periodStart: day(-10), periodEnd: day(19), limits: [{ limitType: PlanLimitType.CONTENT_IDEAS, limit: 20n }] });
    expect((await svc().getPlanLimitUsage({ accountId: account })).limits[0]).to.include({ amountUsed: 6n, limit: 20n, percentUsed: 30 });
  });

  it("rejects bad periods, overlapping periods, unset types and consumption with no limit", async () => {
    const account = newAccount("plan");
    let err = await expectError(
      svc().setPlanLimits({ accountId: account, periodStart: day(5), periodEnd: day(1), limits: [{ limitType: PlanLimitType.UNSPECIFIED, limit: -1n }] }),
      Code.InvalidArgument,
    );
    expect(badFields(err)).to.have.members(["period_end", "limits[0].limit_type", "limits[0].limit"]);
    err = await expectError(svc().setPlanLimits({ accountId: account, limits: [] }), Code.InvalidArgument);
    expect(badFields(err)).to.have.members(["period_start", "period_end", "limits"]);
    await svc().setPlanLimits({ accountId: account, periodStart: day(0), periodEnd: day(10), limits: [{ limitType: PlanLimitType.CONTENT_WORDS, limit: 1n }] });
    await expectError(
      svc().setPlanLimits({ accountId: account, periodStart: day(5), periodEnd: day(20), limits: [{ limitType: PlanLimitType.CONTENT_WORDS, limit: 1n }] }),
      Code.FailedPrecondition,
      "PERIOD_OVERLAP",
    );
    await expectError(svc().consumePlanLimit({ accountId: account, limitType: PlanLimitType.IMAGES_BASIC, amount: 1n, idempotencyKey: key() }), Code.FailedPrecondition, "NO_PLAN_LIMIT");
    err = await expectError(svc().consumePlanLimit({ accountId: account, limitType: PlanLimitType.UNSPECIFIED, amount: 0n, idempotencyKey: key() }), Code.InvalidArgument);
    expect(badFields(err)).to.have.members(["limit_type", "amount"]);
    await expectError(client(CreditService, TOKENS.accountA).consumePlanLimit({ accountId: "acct_a", limitType: PlanLimitType.IMAGES_BASIC, amount: 1n, idempotencyKey: key() }), Code.PermissionDenied);
  });
});
