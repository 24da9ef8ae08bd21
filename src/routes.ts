/**
 * Mounts the billing services, diagnostics, health and reflection. A pure
 * function of its dependencies: the server only mounts what this returns.
 */
import type { DescFile, DescService } from "@bufbuild/protobuf";
import type { ConnectRouter } from "@connectrpc/connect";
import { AutomationService, file_billing_v1_automation_service } from "../gen/billing/v1/automation_service_pb.js";
import { CreditService, file_billing_v1_credit_service } from "../gen/billing/v1/credit_service_pb.js";
import { DiagnosticsService, file_billing_v1_diagnostics_service } from "../gen/billing/v1/diagnostics_service_pb.js";
import { EventService, file_billing_v1_event_service } from "../gen/billing/v1/event_service_pb.js";
import { InvoiceService, file_billing_v1_invoice_service } from "../gen/billing/v1/invoice_service_pb.js";
import { ModelConfigService, file_billing_v1_model_config_service } from "../gen/billing/v1/model_config_service_pb.js";
import { PaymentService, file_billing_v1_payment_service } from "../gen/billing/v1/payment_service_pb.js";
import * as reflection1 from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as reflectionAlpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health, file_health_v1_health } from "../gen/health/v1/health_pb.js";
import type { Invoices } from "./domain/invoices/invoices.js";
import type { ModelCatalogue } from "./domain/models/catalogue.js";
import type { PaymentMethods } from "./domain/payments/payment-methods.js";
import type { Payments } from "./domain/payments/payments.js";
import { createCreditServiceHandler, type CreditServiceDeps } from "./handlers/credit-service.js";
import { createHealthHandler } from "./handlers/health.js";
import { createInvoiceServiceHandler } from "./handlers/invoice-service.js";
import { createPaymentServiceHandler } from "./handlers/payment-service.js";
import { createModelConfigServiceHandler } from "./handlers/model-config-service.js";
import { createReflectionHandlers } from "./handlers/reflection.js";
import { createDiagnosticsServiceHandler } from "./handlers/diagnostics-service.js";
import { createEventServiceHandler, type EventServiceDeps } from "./handlers/event-service.js";
import { createAutomationServiceHandler, type AutomationServiceDeps } from "./handlers/automation-service.js";

export interface RouteDependencies {
  credit: CreditServiceDeps;
  catalogue: ModelCatalogue;
  invoices: Invoices;
  payments: Payments;
  paymentMethods: PaymentMethods;
  events: EventServiceDeps;
  automation: AutomationServiceDeps;
  databaseIsUp: () => Promise<boolean>;
}

const SERVED_FILES: DescFile[] = [
  file_billing_v1_credit_service,
  file_billing_v1_invoice_service,
  file_billing_v1_payment_service,
  file_billing_v1_model_config_service,
  file_billing_v1_diagnostics_service,
  file_billing_v1_event_service,
  file_billing_v1_automation_service,
  file_health_v1_health,
  reflection1.file_grpc_reflection_v1_reflection,
  reflectionAlpha.file_grpc_reflection_v1alpha_reflection,
];

/** Every service the server mounts (the policy walk test calls each of their RPCs). */
export const SERVED_SERVICES: DescService[] = [
  CreditService,
  InvoiceService,
  PaymentService,
  ModelConfigService,
  DiagnosticsService,
  EventService,
  AutomationService,
  Health,
  reflection1.ServerReflection,
  reflectionAlpha.ServerReflection,
];

/** The routes of the whole API. RPCs without a handler answer UNIMPLEMENTED. */
export function createRoutes(deps: RouteDependencies) {
  const reflection = createReflectionHandlers(SERVED_FILES, SERVED_SERVICES.map((s) => s.typeName));
  return (router: ConnectRouter) => {
    router.service(CreditService, createCreditServiceHandler(deps.credit));
    router.service(InvoiceService, createInvoiceServiceHandler(deps.invoices));
    router.service(PaymentService, createPaymentServiceHandler(deps.payments, deps.paymentMethods));
    router.service(ModelConfigService, createModelConfigServiceHandler(deps.catalogue));
    router.service(DiagnosticsService, createDiagnosticsServiceHandler());
    router.service(EventService, createEventServiceHandler(deps.events));
    router.service(AutomationService, createAutomationServiceHandler(deps.automation));
    router.service(Health, createHealthHandler(deps.databaseIsUp));
    router.service(reflection1.ServerReflection, reflection.v1);
    router.service(reflectionAlpha.ServerReflection, reflection.v1alpha);
  };
}
