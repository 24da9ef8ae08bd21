/**
 * Connect JSON follows the canonical proto3 JSON mapping strictly (README.md, "Calling it",
 * "Input limits"): non-canonical int64 strings and unknown fields are
 * INVALID_ARGUMENT naming the field, and int64 values that cannot be stored
 * are INVALID_ARGUMENT naming the field too (never INTERNAL, never an
 * unnamed "value out of range"), on Connect JSON and on gRPC.
 */
import { Code } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import { expect } from "chai";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { TOKENS, badFields, client, expectError, grpcJsCall, grpcJsClient, grpcJsDetails, key, newAccount } from "../harness.js";
import { connectError, connectJson, describeH1 } from "./raw.js";

const GRANT = "/billing.v1.CreditService/GrantCredits";
const INT64_MAX = "9223372036854775807";

const admin = () => client(CreditService, TOKENS.admin);

async function balanceOf(accountId: string): Promise<bigint> {
  return (await admin().getBalance({ accountId })).balance!.balance;
}

async function rowsOf(accountId: string): Promise<number> {
  return (await admin().listTransactions({ accountId, pageSize: 500 })).transactions.length;
}

/** A GrantCredits body as raw JSON text, with `amountJson` spliced in verbatim. */
function grantBody(accountId: string, amountJson: string, extra = ""): string {
  return `{"accountId":${JSON.stringify(accountId)},"amount":${amountJson},"type":"CREDIT_TRANSACTION_TYPE_ADJUSTMENT","idempotencyKey":${JSON.stringify(key())}${extra}}`;
}

describe("hostile input: strict canonical proto3 JSON (Connect JSON)", () => {
  describe("int64 strings", () => {
    for (const amount of ["0x10", " 1", "1 ", "+1", "01", "", "-0", "1.0", "1e3", "1_000", "١"]) {
      it(`refuses amount ${JSON.stringify(amount)} with 400 invalid_argument naming "amount", and grants nothing`, async () => {
        const account = newAccount("canon");
        const a = await connectJson(GRANT, grantBody(account, JSON.stringify(amount)), TOKENS.admin);
        expect(a.status, describeH1(a)).to.equal(400);
        const e = connectError(a);
        expect(e.code, describeH1(a)).to.equal("invalid_argument");
        expect(e.fields, describeH1(a)).to.include("amount");
        expect(await balanceOf(account)).to.equal(0n);
        expect(await rowsOf(account)).to.equal(0);
      });
    }

    for (const amount of ["1.5", "1e400", "true", "null", "[5]", '{"v":5}']) {
      it(`refuses the JSON value ${amount} as amount with 400 invalid_argument naming "amount", and grants nothing`, async () => {
        const account = newAccount("canonv");
        const a = await connectJson(GRANT, grantBody(account, amount), TOKENS.admin);
        // null is the default value in proto3 JSON: then amount is 0, refused as not positive.
        expect(a.status, describeH1(a)).to.equal(400);
        const e = connectError(a);
        expect(e.code, describeH1(a)).to.equal("invalid_argument");
        expect(e.fields, describeH1(a)).to.include("amount");
        expect(await balanceOf(account)).to.equal(0n);
      });
    }

    it('accepts amount "5" (canonical string) and 5 (a JSON number)', async () => {
      const account = newAccount("canonok");
      for (const amount of ['"5"', "5"]) {
        const a = await connectJson(GRANT, grantBody(account, amount), TOKENS.admin);
        expect(a.status, describeH1(a)).to.equal(200);
        expect(JSON.parse(a.body.toString()).transaction.amount).to.equal("5");
      }
      expect(await balanceOf(account)).to.equal(10n);
    });
  });

  describe("unknown fields", () => {
    it('refuses a typo\'d field ("acountId") with 400 invalid_argument naming it, and grants nothing', async () => {
      const account = newAccount("typo");
      const body = `{"acountId":${JSON.stringify(account)},"amount":"5","type":"CREDIT_TRANSACTION_TYPE_ADJUSTMENT","idempotencyKey":${JSON.stringify(key())}}`;
      const a = await connectJson(GRANT, body, TOKENS.admin);
      expect(a.status, describeH1(a)).to.equal(400);
      const e = connectError(a);
      expect(e.code).to.equal("invalid_argument");
      expect(e.fields, describeH1(a)).to.include("acountId");
      expect(await balanceOf(account)).to.equal(0n);
    });

    it("refuses an unknown field next to a complete valid request, and grants nothing", async () => {
      const account = newAccount("unknown");
      const a = await connectJson(GRANT, grantBody(account, '"5"', ',"bonus":"1000"'), TOKENS.admin);
      expect(a.status, describeH1(a)).to.equal(400);
      const e = connectError(a);
      expect(e.code).to.equal("invalid_argument");
      expect(e.fields, describeH1(a)).to.include("bonus");
      expect(await balanceOf(account)).to.equal(0n);
      expect(await rowsOf(account)).to.equal(0);
    });
  });

  describe("int64 values that cannot be stored", () => {
    it(`accepts amount ${INT64_MAX} (int64 max) on a fresh account exactly, since it fits the balance`, async () => {
      const account = newAccount("max");
      const a = await connectJson(GRANT, grantBody(account, JSON.stringify(INT64_MAX)), TOKENS.admin);
      expect(a.status, describeH1(a)).to.equal(200);
      expect(await balanceOf(account)).to.equal(BigInt(INT64_MAX));
    });

    it(`refuses amount ${INT64_MAX} onto a balance of 1 with INVALID_ARGUMENT naming "amount", and keeps the balance`, async () => {
      const account = newAccount("maxplus");
      await admin().grantCredits({ accountId: account, amount: 1n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() });
      const a = await connectJson(GRANT, grantBody(account, JSON.stringify(INT64_MAX)), TOKENS.admin);
      expect(a.status, describeH1(a)).to.equal(400);
      const e = connectError(a);
      expect(e.code, describeH1(a)).to.equal("invalid_argument");
      expect(e.fields, describeH1(a)).to.include("amount");
      expect(await balanceOf(account)).to.equal(1n);
      expect(await rowsOf(account)).to.equal(1);
    });

    it("refuses amount 9223372036854775808 (past int64) with 400 invalid_argument naming \"amount\"", async () => {
      const account = newAccount("pastmax");
      const a = await connectJson(GRANT, grantBody(account, '"9223372036854775808"'), TOKENS.admin);
      expect(a.status, describeH1(a)).to.equal(400);
      const e = connectError(a);
      expect(e.code).to.equal("invalid_argument");
      expect(e.fields, describeH1(a)).to.include("amount");
    });

    it('refuses a second grant that would overflow the balance with INVALID_ARGUMENT naming "amount", and keeps the first', async () => {
      const account = newAccount("overflow");
      const half = 2n ** 62n;
      const first = await admin().grantCredits({ accountId: account, amount: half, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() });
      expect(first.balance?.balance).to.equal(half);
      const err = await expectError(admin().grantCredits({ accountId: account, amount: half, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() }), Code.InvalidArgument);
      expect(badFields(err)).to.include("amount");
      const raw = await connectJson(GRANT, grantBody(account, JSON.stringify(half.toString())), TOKENS.admin);
      expect(raw.status, describeH1(raw)).to.equal(400);
      expect(connectError(raw).fields).to.include("amount");
      expect(await balanceOf(account)).to.equal(half);
      expect(await rowsOf(account)).to.equal(1);
    });

    /** A grpc-js GrantCredits of `amount` to `account`; returns the ServiceError it must fail with. */
    async function grpcJsGrantError(account: string, amount: string): Promise<grpc.ServiceError> {
      const c = grpcJsClient("CreditService");
      try {
        await grpcJsCall(c, "grantCredits", { accountId: account, amount, type: "CREDIT_TRANSACTION_TYPE_ADJUSTMENT", idempotencyKey: key() }, TOKENS.admin);
      } catch (e) {
        return e as grpc.ServiceError;
      } finally {
        c.close();
      }
      throw new Error(`the grpc-js grant of ${amount} to ${account} succeeded`);
    }

    it(`refuses a grpc-js GrantCredits with amount ${INT64_MAX} onto a balance of 1 with INVALID_ARGUMENT naming "amount"`, async () => {
      const account = newAccount("grpcjsover");
      await admin().grantCredits({ accountId: account, amount: 1n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() });
      const error = await grpcJsGrantError(account, INT64_MAX);
      expect(grpc.status[error.code], error.details).to.equal("INVALID_ARGUMENT");
      expect(grpcJsDetails(error).fields, error.details).to.include("amount");
      expect(await balanceOf(account)).to.equal(1n);
    });
  });
});
