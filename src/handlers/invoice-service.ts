/**
 * InvoiceService: proto <-> domain mapping for invoices and package purchases.
 */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { PaymentMethod } from "../../gen/billing/v1/common_pb.js";
import {
  AddLineItemResponseSchema,
  CreateInvoiceResponseSchema,
  FinalizeInvoiceResponseSchema,
  GetInvoiceResponseSchema,
  InvoiceSchema,
  InvoiceService,
  InvoiceStatus,
  LineItemSchema,
  ListInvoicesResponseSchema,
  MarkUncollectibleResponseSchema,
  PurchaseCreditPackageResponseSchema,
  VoidInvoiceResponseSchema,
  type BillingSnapshot,
} from "../../gen/billing/v1/invoice_service_pb.js";
import { ownerCheck } from "../auth/ownership.js";
import { invalidField } from "../domain/errors.js";
import type { InvoiceView, Invoices, PaymentMethodName } from "../domain/invoices/invoices.js";
import type { InvoiceStatus as DomainInvoiceStatus } from "../domain/invoices/state-machine.js";
import { calendarDateToProto, enumFromProto, enumToProto, ts, txOptions } from "./convert.js";

const invoiceStatuses: [InvoiceStatus, DomainInvoiceStatus][] = [
  [InvoiceStatus.DRAFT, "draft"],
  [InvoiceStatus.PENDING, "pending"],
  [InvoiceStatus.PAID, "paid"],
  [InvoiceStatus.VOID, "void"],
  [InvoiceStatus.UNCOLLECTIBLE, "uncollectible"],
];

export const paymentMethods: [PaymentMethod, PaymentMethodName][] = [
  [PaymentMethod.STRIPE, "stripe"],
  [PaymentMethod.PAYPAL, "paypal"],
  [PaymentMethod.BANK_TRANSFER, "bank_transfer"],
  [PaymentMethod.LOCAL_WALLET, "local_wallet"],
  [PaymentMethod.MANUAL, "manual"],
];

function snapshotOf(s: BillingSnapshot | undefined) {
  return s && { email: s.email, name: s.name, address: s.address };
}

function invoiceToProto(i: InvoiceView) {
  return create(InvoiceSchema, {
    id: i.id,
    accountId: i.accountId,
    invoiceNumber: i.invoiceNumber,
    subscriptionId: i.subscriptionId,
    subtotal: i.subtotal,
    tax: i.tax,
    total: i.total,
    currency: i.currency,
    status: enumToProto(invoiceStatuses, i.status),
    invoiceDate: calendarDateToProto(i.invoiceDate),
    dueDate: calendarDateToProto(i.dueDate),
    paidAt: ts(i.paidAt),
    lineItems: i.lineItems.map((l) => create(LineItemSchema, { description: l.description, quantity: BigInt(l.quantity), unitPrice: l.unitPrice, amount: l.amount })),
    stripeInvoiceId: i.stripeInvoiceId,
    paymentMethod: i.paymentMethod ? enumToProto(paymentMethods, i.paymentMethod) : PaymentMethod.UNSPECIFIED,
    notes: i.notes,
    metadata: i.metadata as never,
    billingSnapshot: i.billingSnapshot,
    creditPackageSlug: i.creditPackageSlug,
    creditPackageCredits: i.creditPackageCredits,
    amountPaid: i.amountPaid,
    createdAt: ts(i.createdAt),
    updatedAt: ts(i.updatedAt),
  });
}

/** The whole InvoiceService. */
export function createInvoiceServiceHandler(invoices: Invoices): ServiceImpl<typeof InvoiceService> {
  return {
    async createInvoice(req, ctx) {
      const r = await invoices.create(
        {
          accountId: req.accountId,
          currency: req.currency,
          lineItems: req.lineItems.map((l) => ({ description: l.description, quantity: l.quantity, unitPrice: l.unitPrice, amount: l.amount })),
          tax: req.tax,
          dueDate: req.dueDate,
          notes: req.notes,
          subscriptionId: req.subscriptionId,
          idempotencyKey: req.idempotencyKey,
          billingSnapshot: snapshotOf(req.billingSnapshot),
          metadata: req.metadata ?? {},
        },
        txOptions(ctx),
      );
      return create(CreateInvoiceResponseSchema, { invoice: invoiceToProto(r) });
    },
    async getInvoice(req, ctx) {
      return create(GetInvoiceResponseSchema, { invoice: invoiceToProto(await invoices.get(req.invoiceId, ownerCheck(ctx))) });
    },
    async listInvoices(req) {
      // Account keys name their own account_id (the auth interceptor checks it).
      const r = await invoices.list({
        accountId: req.accountId,
        statuses: req.statuses.map((s, i) => {
          const d = enumFromProto(invoiceStatuses, s, `statuses[${i}]`);
          if (!d) throw invalidField(`statuses[${i}]`, "must not be UNSPECIFIED");
          return d;
        }),
        startDate: req.startDate,
        endDate: req.endDate,
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListInvoicesResponseSchema, { invoices: r.invoices.map(invoiceToProto), nextPageToken: r.nextPageToken });
    },
    async addLineItem(req, ctx) {
      const r = await invoices.addLineItem(req.invoiceId, { description: req.description, quantity: req.quantity, unitPrice: req.unitPrice, amount: req.amount }, txOptions(ctx));
      return create(AddLineItemResponseSchema, { invoice: invoiceToProto(r) });
    },
    async finalizeInvoice(req, ctx) {
      return create(FinalizeInvoiceResponseSchema, { invoice: invoiceToProto(await invoices.finalize(req.invoiceId, snapshotOf(req.billingSnapshot), txOptions(ctx))) });
    },
    async voidInvoice(req, ctx) {
      return create(VoidInvoiceResponseSchema, { invoice: invoiceToProto(await invoices.close(req.invoiceId, "void", req.reason, txOptions(ctx))) });
    },
    async markUncollectible(req, ctx) {
      return create(MarkUncollectibleResponseSchema, { invoice: invoiceToProto(await invoices.close(req.invoiceId, "mark_uncollectible", req.reason, txOptions(ctx))) });
    },
    async purchaseCreditPackage(req, ctx) {
      const r = await invoices.purchasePackage(
        { accountId: req.accountId, packageSlug: req.packageSlug, paymentMethod: enumFromProto(paymentMethods, req.paymentMethod, "payment_method"), idempotencyKey: req.idempotencyKey },
        txOptions(ctx),
      );
      return create(PurchaseCreditPackageResponseSchema, { invoice: invoiceToProto(r) });
    },
  };
}
