/**
 * AutomationService: proto <-> domain mapping for low-balance alerts and,
 * from auto-top-up.ts, automatic top-ups. No rules here.
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import { AutomationService, GetBalanceAlertsResponseSchema, SetBalanceAlertsResponseSchema } from "../../gen/billing/v1/automation_service_pb.js";
import type { BalanceAlerts } from "../domain/automation/balance-alerts.js";
import { createAutoTopUpHandlers, type AutoTopUpDeps } from "./auto-top-up.js";
import { txOptions } from "./convert.js";

export interface AutomationServiceDeps extends AutoTopUpDeps {
  alerts: BalanceAlerts;
}

export function createAutomationServiceHandler(d: AutomationServiceDeps): Partial<ServiceImpl<typeof AutomationService>> {
  return {
    ...createAutoTopUpHandlers(d),
    async getBalanceAlerts(req) {
      return create(GetBalanceAlertsResponseSchema, { accountId: req.accountId, thresholds: await d.alerts.get(req.accountId) });
    },
    async setBalanceAlerts(req, ctx: HandlerContext) {
      return create(SetBalanceAlertsResponseSchema, { accountId: req.accountId, thresholds: await d.alerts.set(req.accountId, req.thresholds, txOptions(ctx)) });
    },
  };
}
