/**
 * CreditService: proto <-> domain mapping for the ledger. RPCs not listed
 * here answer UNIMPLEMENTED until their issue lands.
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  CreditService,
  DeductCreditsResponseSchema,
  GetBalanceResponseSchema,
  GrantCreditsResponseSchema,
  ListTransactionsResponseSchema,
  type DeductCreditsRequest,
  type GetBalanceRequest,
  type GrantCreditsRequest,
  type ListTransactionsRequest,
} from "../../gen/billing/v1/credit_service_pb.js";
import type { CreditLedger } from "../domain/credits/ledger.js";
import { balanceToProto, dateOf, transactionToProto, txOptions, txTypeFromProto, txTypesFromProto, usageLogToProto } from "./convert.js";

/** The implemented part of CreditService. */
export function createCreditServiceHandler(ledger: CreditLedger): Partial<ServiceImpl<typeof CreditService>> {
  return {
    async getBalance(req: GetBalanceRequest) {
      return create(GetBalanceResponseSchema, { balance: balanceToProto(await ledger.getBalance(req.accountId)) });
    },

    async grantCredits(req: GrantCreditsRequest, ctx: HandlerContext) {
      const r = await ledger.grant(
        {
          accountId: req.accountId,
          amount: req.amount,
          type: txTypeFromProto(req.type, "type"),
          description: req.description,
          metadata: req.metadata ?? {},
          paymentId: req.paymentId,
          idempotencyKey: req.idempotencyKey,
        },
        txOptions(ctx),
      );
      return create(GrantCreditsResponseSchema, { transaction: transactionToProto(r.transaction), balance: balanceToProto(r.balance) });
    },

    async deductCredits(req: DeductCreditsRequest, ctx: HandlerContext) {
      const u = req.usage;
      const r = await ledger.deduct(
        {
          accountId: req.accountId,
          operationType: req.operationType,
          usage: u && { credits: u.credits, tokensInput: u.tokensInput, tokensOutput: u.tokensOutput, model: u.model, imageCount: u.imageCount },
          relatedObjectType: req.relatedObjectType,
          relatedObjectId: req.relatedObjectId,
          metadata: req.metadata ?? {},
          idempotencyKey: req.idempotencyKey,
        },
        txOptions(ctx),
      );
      return create(DeductCreditsResponseSchema, {
        transaction: transactionToProto(r.transaction),
        usageLog: usageLogToProto(r.usageLog),
        balance: balanceToProto(r.balance),
      });
    },

    async listTransactions(req: ListTransactionsRequest) {
      const r = await ledger.listTransactions({
        accountId: req.accountId,
        types: txTypesFromProto(req.types, "types"),
        startTime: dateOf(req.startTime),
        endTime: dateOf(req.endTime),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListTransactionsResponseSchema, { transactions: r.transactions.map(transactionToProto), nextPageToken: r.nextPageToken });
    },
  };
}
