/**
 * Who may call what: the roles of README.md ("Configuration": roles), per RPC, in one table.
 *
 * - admin:    admin keys only
 * - internal: admin and service keys
 * - account:  admin, service, and account keys for their own account
 * - owner:    admin, and account keys for their own account (not service)
 * - public:   any valid key (catalogues)
 * - open:     no key needed (health, reflection)
 *
 * For `account`/`owner` RPCs the interceptor checks a request's top-level
 * `account_id`; RPCs that name a resource by id check the loaded resource's
 * account with `assertAccountAccess` in the handler.
 */
import { BillingError, Reason } from "../domain/errors.js";
import type { Principal } from "./api-keys.js";

export type Access = "admin" | "internal" | "account" | "owner" | "public" | "open";

const OPEN_SERVICES = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

const POLICY: Record<string, Record<string, Access>> = {
  "billing.v1.DiagnosticsService": {
    Echo: "internal",
  },
  "billing.v1.CreditService": {
    GetBalance: "account",
    GrantCredits: "internal",
    AdjustCredits: "admin",
    DeductCredits: "internal",
    EstimateCredits: "public",
    ReserveCredits: "internal",
    CommitReservation: "internal",
    ReleaseReservation: "internal",
    ListTransactions: "account",
    ListCreditLots: "account",
    CreateCostConfig: "admin",
    VoidCreditLot: "admin",
    ListUsageLogs: "account",
    GetUsageSummary: "account",
    WatchBalance: "account",
    GetCostConfig: "public",
    ListCostConfigs: "public",
    UpdateCostConfig: "admin",
    ListCostConfigHistory: "public",
    GetBillingConfiguration: "public",
    UpdateBillingConfiguration: "admin",
    SetPlanLimits: "internal",
    ConsumePlanLimit: "internal",
    GetPlanLimitUsage: "account",
    ListCreditPackages: "public",
    GetCreditPackage: "public",
    CreateCreditPackage: "admin",
    UpdateCreditPackage: "admin",
    ScheduleCostConfigVersion: "admin",
    CancelCostConfigVersion: "admin",
    ListCostConfigVersions: "public",
  },
  "billing.v1.InvoiceService": {
    CreateInvoice: "internal",
    GetInvoice: "account",
    ListInvoices: "account",
    AddLineItem: "internal",
    FinalizeInvoice: "internal",
    VoidInvoice: "internal",
    MarkUncollectible: "admin",
    PurchaseCreditPackage: "account",
  },
  "billing.v1.PaymentService": {
    SubmitManualPayment: "owner",
    ApprovePayment: "admin",
    RejectPayment: "admin",
    RefundPayment: "admin",
    GetPayment: "account",
    ListPayments: "account",
    ListPaymentHistory: "account",
    ListPaymentMethods: "public",
    UpsertPaymentMethodConfig: "admin",
    DeletePaymentMethodConfig: "admin",
    CreateAccountPaymentMethod: "owner",
    ListAccountPaymentMethods: "owner",
    UpdateAccountPaymentMethod: "owner",
    SetDefaultAccountPaymentMethod: "owner",
    DeleteAccountPaymentMethod: "owner",
  },
  "billing.v1.EventService": {
    ListEvents: "account",
    WatchEvents: "account",
    CreateWebhookEndpoint: "admin",
    GetWebhookEndpoint: "admin",
    ListWebhookEndpoints: "admin",
    UpdateWebhookEndpoint: "admin",
    DeleteWebhookEndpoint: "admin",
    ListWebhookDeliveries: "admin",
    RedeliverEvent: "admin",
  },
  "billing.v1.AutomationService": {
    GetBalanceAlerts: "account",
    SetBalanceAlerts: "account",
    GetAutoTopUp: "account",
    UpdateAutoTopUp: "owner",
    ListAutoTopUps: "account",
  },
  "billing.v1.ModelConfigService": {
    CreateModelConfig: "admin",
    GetModelConfig: "public",
    ListModelConfigs: "public",
    UpdateModelConfig: "admin",
    SetDefaultModel: "admin",
    GetDefaultModel: "public",
    CalculateCost: "public",
    ListModelConfigHistory: "public",
    ScheduleModelPriceVersion: "admin",
    CancelModelPriceVersion: "admin",
    ListModelPriceVersions: "public",
  },
};

/** The policy table's entry for an RPC, or undefined when the table has none (a test walks every served RPC). */
export function policyEntry(service: string, method: string): Access | undefined {
  if (OPEN_SERVICES.has(service)) return "open";
  return POLICY[service]?.[method];
}

/** The access rule of an RPC; unknown billing RPCs are admin-only. */
export function accessOf(service: string, method: string): Access {
  if (OPEN_SERVICES.has(service)) return "open";
  return POLICY[service]?.[method] ?? "admin";
}

/** Throws PERMISSION_DENIED unless `principal` may use RPCs with rule `access` at all. */
export function assertRole(principal: Principal, access: Access): void {
  const allowed =
    access === "open" ||
    access === "public" ||
    principal.role === "admin" ||
    (access === "internal" && principal.role === "service") ||
    (access === "account" && (principal.role === "service" || principal.role === "account")) ||
    (access === "owner" && principal.role === "account");
  if (!allowed) throw denied(`this RPC needs ${describe(access)}`);
}

/** Throws PERMISSION_DENIED unless `principal` may act on `accountId` (account keys: only their own). */
export function assertAccountAccess(principal: Principal, accountId: string): void {
  if (principal.role !== "account") return;
  if (accountId === "") throw denied("account keys must name their own account_id");
  if (accountId !== principal.accountId) throw denied("this key may only access its own account");
}

function denied(message: string): BillingError {
  return new BillingError("permission_denied", Reason.PermissionDenied, message);
}

function describe(access: Access): string {
  switch (access) {
    case "admin":
      return "an admin key";
    case "internal":
      return "an admin or service key";
    case "owner":
      return "an admin key or the account's own key";
    default:
      return "a valid key";
  }
}
