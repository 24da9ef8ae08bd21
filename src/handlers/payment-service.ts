/**
 * PaymentService: proto <-> domain mapping for payments and payment methods.
 * Responses are built from views that have no secret fields at all.
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  AccountPaymentMethodSchema,
  ApprovePaymentResponseSchema,
  CreateAccountPaymentMethodResponseSchema,
  DeleteAccountPaymentMethodResponseSchema,
  DeletePaymentMethodConfigResponseSchema,
  GetPaymentResponseSchema,
  ListAccountPaymentMethodsResponseSchema,
  ListPaymentHistoryResponseSchema,
  ListPaymentMethodsResponseSchema,
  ListPaymentsResponseSchema,
  PaymentHistoryEntrySchema,
  PaymentMethodConfigSchema,
  PaymentSchema,
  PaymentService,
  PaymentStatus,
  RefundPaymentResponseSchema,
  RejectPaymentResponseSchema,
  SetDefaultAccountPaymentMethodResponseSchema,
  SubmitManualPaymentResponseSchema,
  UpdateAccountPaymentMethodResponseSchema,
  UpsertPaymentMethodConfigResponseSchema,
  type AccountPaymentMethod,
} from "../../gen/billing/v1/payment_service_pb.js";
import { PaymentMethod } from "../../gen/billing/v1/common_pb.js";
import { assertOwnAccount, ownerCheck } from "../auth/ownership.js";
import { assertRole } from "../auth/policy.js";
import { principalOf } from "../auth/principal.js";
import { invalidField } from "../domain/errors.js";
import { accountMethodFields, type AccountMethodField, type AccountMethodInput, type AccountMethodView, type MethodConfigView, type PaymentMethods } from "../domain/payments/payment-methods.js";
import type { PaymentHistoryView, PaymentView, Payments } from "../domain/payments/payments.js";
import type { PaymentStatus as DomainPaymentStatus } from "../domain/payments/state-machine.js";
import { enumFromProto, enumToProto, ts, txOptions } from "./convert.js";
import { paymentMethods } from "./invoice-service.js";

const paymentStatuses: [PaymentStatus, DomainPaymentStatus][] = [
  [PaymentStatus.PENDING_APPROVAL, "pending_approval"],
  [PaymentStatus.SUCCEEDED, "succeeded"],
  [PaymentStatus.FAILED, "failed"],
  [PaymentStatus.REFUNDED, "refunded"],
  [PaymentStatus.PARTIALLY_REFUNDED, "partially_refunded"],
  [PaymentStatus.DISPUTED, "disputed"],
];

function paymentToProto(p: PaymentView) {
  return create(PaymentSchema, {
    ...p,
    status: enumToProto(paymentStatuses, p.status),
    paymentMethod: enumToProto(paymentMethods, p.paymentMethod),
    metadata: p.metadata as never,
    approvedAt: ts(p.approvedAt),
    processedAt: ts(p.processedAt),
    failedAt: ts(p.failedAt),
    refundedAt: ts(p.refundedAt),
    createdAt: ts(p.createdAt),
    updatedAt: ts(p.updatedAt),
  });
}

function historyToProto(h: PaymentHistoryView) {
  return create(PaymentHistoryEntrySchema, {
    id: h.id,
    paymentId: h.paymentId,
    fromStatus: h.fromStatus ? enumToProto(paymentStatuses, h.fromStatus) : PaymentStatus.UNSPECIFIED,
    toStatus: enumToProto(paymentStatuses, h.toStatus),
    actor: h.actor,
    note: h.note,
    createdAt: ts(h.createdAt),
  });
}

function configToProto(c: MethodConfigView) {
  // Built field by field from a view without secrets: nothing write-only can leak.
  return create(PaymentMethodConfigSchema, {
    countryCode: c.countryCode,
    paymentMethod: enumToProto(paymentMethods, c.paymentMethod),
    isEnabled: c.isEnabled,
    displayName: c.displayName,
    instructions: c.instructions,
    bankName: c.bankName,
    accountNumber: c.accountNumber,
    routingNumber: c.routingNumber,
    swiftCode: c.swiftCode,
    walletType: c.walletType,
    walletId: c.walletId,
    webhookUrl: c.webhookUrl,
    sortOrder: c.sortOrder,
    hasApiKey: c.hasApiKey,
    hasApiSecret: c.hasApiSecret,
    hasWebhookSecret: c.hasWebhookSecret,
    createdAt: ts(c.createdAt),
    updatedAt: ts(c.updatedAt),
  });
}

function accountMethodToProto(m: AccountMethodView) {
  return create(AccountPaymentMethodSchema, {
    ...m,
    type: enumToProto(paymentMethods, m.type),
    metadata: m.metadata as never,
    createdAt: ts(m.createdAt),
    updatedAt: ts(m.updatedAt),
  });
}

function accountMethodInput(m: AccountPaymentMethod | undefined): AccountMethodInput {
  const c = m ?? create(AccountPaymentMethodSchema);
  return {
    id: c.id,
    accountId: c.accountId,
    type: enumFromProto(paymentMethods, c.type, "account_payment_method.type"),
    displayName: c.displayName,
    isDefault: c.isDefault,
    isEnabled: c.isEnabled,
    isVerified: c.isVerified,
    countryCode: c.countryCode,
    instructions: c.instructions,
    metadata: (c.metadata ?? {}) as Record<string, unknown>,
    providerCustomerId: c.providerCustomerId,
    providerPaymentMethodId: c.providerPaymentMethodId,
  };
}

/** The whole PaymentService. */
export function createPaymentServiceHandler(payments: Payments, methods: PaymentMethods): ServiceImpl<typeof PaymentService> {
  return {
    async submitManualPayment(req, ctx) {
      const r = await payments.submitManual(
        {
          invoiceId: req.invoiceId,
          paymentMethod: enumFromProto(paymentMethods, req.paymentMethod, "payment_method"),
          amount: req.amount,
          manualReference: req.manualReference,
          manualNotes: req.manualNotes,
          idempotencyKey: req.idempotencyKey,
        },
        principalOf(ctx).name,
        ownerCheck(ctx),
        txOptions(ctx),
      );
      return create(SubmitManualPaymentResponseSchema, { payment: paymentToProto(r) });
    },
    async approvePayment(req, ctx) {
      return create(ApprovePaymentResponseSchema, { payment: paymentToProto(await payments.approve(req.paymentId, req.adminNotes, principalOf(ctx).name, txOptions(ctx))) });
    },
    async rejectPayment(req, ctx) {
      return create(RejectPaymentResponseSchema, { payment: paymentToProto(await payments.reject(req.paymentId, req.reason, principalOf(ctx).name, txOptions(ctx))) });
    },
    async refundPayment(req, ctx) {
      const r = await payments.refund(
        { paymentId: req.paymentId, reason: req.reason, revokeAvailableOnly: req.revokeAvailableOnly, idempotencyKey: req.idempotencyKey, amount: req.amount },
        principalOf(ctx).name,
        txOptions(ctx),
      );
      return create(RefundPaymentResponseSchema, { payment: paymentToProto(r) });
    },
    async getPayment(req, ctx) {
      return create(GetPaymentResponseSchema, { payment: paymentToProto(await payments.get(req.paymentId, ownerCheck(ctx))) });
    },
    async listPayments(req) {
      // Account keys name their own account_id (the auth interceptor checks it).
      const r = await payments.list({
        accountId: req.accountId,
        statuses: req.statuses.map((s, i) => enumFromProto(paymentStatuses, s, `statuses[${i}]`) ?? badEnum(`statuses[${i}]`)),
        methods: req.methods.map((m, i) => enumFromProto(paymentMethods, m, `methods[${i}]`) ?? badEnum(`methods[${i}]`)),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListPaymentsResponseSchema, { payments: r.payments.map(paymentToProto), nextPageToken: r.nextPageToken });
    },
    async listPaymentHistory(req, ctx) {
      const r = await payments.history(req.paymentId, req.pageSize, req.pageToken, ownerCheck(ctx));
      return create(ListPaymentHistoryResponseSchema, { entries: r.entries.map(historyToProto), nextPageToken: r.nextPageToken });
    },
    async listPaymentMethods(req) {
      return create(ListPaymentMethodsResponseSchema, { paymentMethods: (await methods.listForCountry(req.countryCode)).map(configToProto) });
    },
    async upsertPaymentMethodConfig(req, ctx) {
      const c = req.paymentMethodConfig;
      const r = await methods.upsertConfig(
        {
          countryCode: c?.countryCode ?? "",
          paymentMethod: enumFromProto(paymentMethods, c?.paymentMethod ?? PaymentMethod.UNSPECIFIED, "payment_method_config.payment_method"),
          isEnabled: c?.isEnabled ?? false,
          displayName: c?.displayName ?? "",
          instructions: c?.instructions ?? "",
          bankName: c?.bankName ?? "",
          accountNumber: c?.accountNumber ?? "",
          routingNumber: c?.routingNumber ?? "",
          swiftCode: c?.swiftCode ?? "",
          walletType: c?.walletType ?? "",
          walletId: c?.walletId ?? "",
          webhookUrl: c?.webhookUrl ?? "",
          sortOrder: c?.sortOrder ?? 0,
        },
        { apiKey: req.secrets?.apiKey ?? "", apiSecret: req.secrets?.apiSecret ?? "", webhookSecret: req.secrets?.webhookSecret ?? "", clear: req.secrets?.clear ?? [] },
        txOptions(ctx),
      );
      return create(UpsertPaymentMethodConfigResponseSchema, { paymentMethodConfig: configToProto(r) });
    },
    async deletePaymentMethodConfig(req) {
      await methods.deleteConfig(req.countryCode, enumFromProto(paymentMethods, req.paymentMethod, "payment_method"));
      return create(DeletePaymentMethodConfigResponseSchema);
    },
    async createAccountPaymentMethod(req, ctx) {
      const input = accountMethodInput(req.accountPaymentMethod);
      if (input.accountId === "") throw invalidField("account_payment_method.account_id", "is required");
      assertOwnAccount(principalOf(ctx), input.accountId);
      assertMaySetProviderRefs(ctx, input.providerCustomerId !== "" || input.providerPaymentMethodId !== "");
      return create(CreateAccountPaymentMethodResponseSchema, { accountPaymentMethod: accountMethodToProto(await methods.createAccountMethod(input, txOptions(ctx))) });
    },
    async listAccountPaymentMethods(req) {
      const r = await methods.listAccountMethods(req.accountId, req.pageSize, req.pageToken);
      return create(ListAccountPaymentMethodsResponseSchema, { accountPaymentMethods: r.methods.map(accountMethodToProto), nextPageToken: r.nextPageToken });
    },
    async updateAccountPaymentMethod(req, ctx) {
      const input = accountMethodInput(req.accountPaymentMethod);
      const paths = req.updateMask?.paths ?? [];
      assertMaySetProviderRefs(ctx, accountMethodFields(input, paths).some((f) => PROVIDER_REF_FIELDS.includes(f)));
      const r = await methods.updateAccountMethod(input, paths, ownerCheck(ctx), txOptions(ctx));
      return create(UpdateAccountPaymentMethodResponseSchema, { accountPaymentMethod: accountMethodToProto(r) });
    },
    async setDefaultAccountPaymentMethod(req, ctx) {
      return create(SetDefaultAccountPaymentMethodResponseSchema, { accountPaymentMethod: accountMethodToProto(await methods.setDefaultAccountMethod(req.id, ownerCheck(ctx), txOptions(ctx))) });
    },
    async deleteAccountPaymentMethod(req, ctx) {
      await methods.deleteAccountMethod(req.id, ownerCheck(ctx));
      return create(DeleteAccountPaymentMethodResponseSchema);
    },
  };
}

const PROVIDER_REF_FIELDS: readonly AccountMethodField[] = ["provider_customer_id", "provider_payment_method_id"];

/**
 * The provider customer and payment method of a saved method decide whom an
 * off-session charge (auto top-up) bills: only admin and service keys set
 * them; account keys get PERMISSION_DENIED before anything is written.
 */
function assertMaySetProviderRefs(ctx: HandlerContext, setsThem: boolean): void {
  if (setsThem) assertRole(principalOf(ctx), "internal");
}

function badEnum(field: string): never {
  throw invalidField(field, "must not be UNSPECIFIED");
}
