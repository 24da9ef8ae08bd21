/**
 * Authentication and roles (README.md, "Configuration": roles): missing/unknown token is
 * UNAUTHENTICATED; a wrong role or another account is PERMISSION_DENIED.
 */
import { Code } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { expect } from "chai";
import { CreditService, CreditTransactionType } from "../gen/billing/v1/credit_service_pb.js";
import { ACCOUNT_A, ACCOUNT_B, TOKENS, client, expectError, grpcJsCall, grpcJsClient, key, newAccount } from "./harness.js";

describe("auth", () => {
  it("rejects a call without a token as UNAUTHENTICATED", async () => {
    await expectError(client(CreditService, undefined).getBalance({ accountId: ACCOUNT_A }), Code.Unauthenticated, "UNAUTHENTICATED");
  });

  it("rejects an unknown token as UNAUTHENTICATED, over grpc-js too", async () => {
    await expectError(client(CreditService, "tok_wrong", "grpc-http2").getBalance({ accountId: ACCOUNT_A }), Code.Unauthenticated);
    const c = grpcJsClient("CreditService");
    try {
      const err = await grpcJsCall(c, "GetBalance", { accountId: ACCOUNT_A }, "tok_wrong").catch((e: grpc.ServiceError) => e);
      expect((err as grpc.ServiceError).code).to.equal(grpc.status.UNAUTHENTICATED);
    } finally {
      c.close();
    }
  });

  it("rejects a malformed authorization header", async () => {
    await expectError(
      client(CreditService, undefined).getBalance({ accountId: ACCOUNT_A }, { headers: { authorization: `Basic ${TOKENS.admin}` } }),
      Code.Unauthenticated,
    );
  });

  it("lets an account key read its own balance", async () => {
    const res = await client(CreditService, TOKENS.accountA).getBalance({ accountId: ACCOUNT_A });
    expect(res.balance?.accountId).to.equal(ACCOUNT_A);
  });

  it("denies an account key another account's balance and ledger", async () => {
    await expectError(client(CreditService, TOKENS.accountA).getBalance({ accountId: ACCOUNT_B }), Code.PermissionDenied, "PERMISSION_DENIED");
    await expectError(client(CreditService, TOKENS.accountA).listTransactions({ accountId: ACCOUNT_B }), Code.PermissionDenied);
  });

  it("denies an account key an empty account_id instead of guessing", async () => {
    await expectError(client(CreditService, TOKENS.accountA).getBalance({ accountId: "" }), Code.PermissionDenied);
  });

  it("denies account keys moving credits, even on their own account", async () => {
    const grant = { accountId: ACCOUNT_A, amount: 10n, type: CreditTransactionType.PURCHASE, description: "free money", idempotencyKey: key() };
    await expectError(client(CreditService, TOKENS.accountA).grantCredits(grant), Code.PermissionDenied);
    await expectError(
      client(CreditService, TOKENS.accountA).deductCredits({ accountId: ACCOUNT_A, operationType: "clustering", usage: { credits: 1n }, idempotencyKey: key() }),
      Code.PermissionDenied,
    );
  });

  it("lets service and admin keys read and move credits for any account", async () => {
    const account = newAccount();
    for (const token of [TOKENS.service, TOKENS.admin, TOKENS.opsAdmin]) {
      const res = await client(CreditService, token).grantCredits({ accountId: account, amount: 5n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() });
      expect(res.transaction?.amount).to.equal(5n);
    }
    const balance = await client(CreditService, TOKENS.service).getBalance({ accountId: account });
    expect(balance.balance?.balance).to.equal(15n);
  });

  it("matches a key configured by its sha256 hash", async () => {
    const res = await client(CreditService, TOKENS.hashed).getBalance({ accountId: ACCOUNT_B });
    expect(res.balance?.accountId).to.equal(ACCOUNT_B);
  });

  it("keeps admin-only RPCs from service keys", async () => {
    await expectError(
      client(CreditService, TOKENS.service).adjustCredits({ accountId: ACCOUNT_A, amount: 1n, reason: "x", idempotencyKey: key() }),
      Code.PermissionDenied,
    );
  });

  it("lets every role read catalogues", async () => {
    for (const token of [TOKENS.accountA, TOKENS.service, TOKENS.admin]) {
      const res = await client(CreditService, token).estimateCredits({ operationType: "clustering", usage: { tokensInput: 250n } });
      expect(res.credits).to.equal(3n);
      expect((await client(CreditService, token).listCostConfigs({})).costConfigs.length).to.be.greaterThan(0);
    }
  });
});
