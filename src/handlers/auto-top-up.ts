/**
 * AutomationService's auto top-up RPCs: proto <-> domain mapping
 * (src/domain/automation/auto-top-up.ts holds the rules).
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  AutoTopUpAttemptSchema,
  AutoTopUpSchema,
  AutoTopUpState,
  GetAutoTopUpResponseSchema,
  ListAutoTopUpsResponseSchema,
  UpdateAutoTopUpResponseSchema,
  type AutomationService,
} from "../../gen/billing/v1/automation_service_pb.js";
import { assertOwnAccount } from "../auth/ownership.js";
import { principalOf } from "../auth/principal.js";
import type { AttemptState, AttemptView, AutoTopUps, AutoTopUpView } from "../domain/automation/auto-top-up.js";
import { invalidField } from "../domain/errors.js";
import { enumToProto, ts, txOptions } from "./convert.js";

export interface AutoTopUpDeps {
  autoTopUps: AutoTopUps;
}

const STATES: [AutoTopUpState, AttemptState][] = [
  [AutoTopUpState.PENDING, "pending"],
  [AutoTopUpState.PROCESSING, "processing"],
  [AutoTopUpState.SUCCEEDED, "succeeded"],
  [AutoTopUpState.FAILED, "failed"],
  [AutoTopUpState.SKIPPED, "skipped"],
];

function settingsToProto(s: AutoTopUpView) {
  return create(AutoTopUpSchema, { ...s, updatedAt: ts(s.updatedAt), disabledAt: ts(s.disabledAt) });
}

function attemptToProto(a: AttemptView) {
  return create(AutoTopUpAttemptSchema, { ...a, state: enumToProto(STATES, a.state), createdAt: ts(a.createdAt), completedAt: ts(a.completedAt) });
}

export function createAutoTopUpHandlers(d: AutoTopUpDeps): Partial<ServiceImpl<typeof AutomationService>> {
  return {
    async getAutoTopUp(req) {
      return create(GetAutoTopUpResponseSchema, { autoTopUp: settingsToProto(await d.autoTopUps.get(req.accountId)) });
    },
    async updateAutoTopUp(req, ctx: HandlerContext) {
      const s = req.autoTopUp ?? create(AutoTopUpSchema);
      if (s.accountId === "") throw invalidField("auto_top_up.account_id", "is required");
      // The account id is nested, so the interceptor cannot see it.
      const principal = principalOf(ctx);
      assertOwnAccount(principal, s.accountId);
      const input = { accountId: s.accountId, enabled: s.enabled, threshold: s.threshold, packageId: s.packageId, monthlyLimit: s.monthlyLimit, monthlyAmountLimit: s.monthlyAmountLimit };
      const updated = await d.autoTopUps.update(input, req.updateMask?.paths ?? [], principal.name, txOptions(ctx));
      return create(UpdateAutoTopUpResponseSchema, { autoTopUp: settingsToProto(updated) });
    },
    async listAutoTopUps(req) {
      const r = await d.autoTopUps.list(req.accountId, req.pageSize, req.pageToken);
      return create(ListAutoTopUpsResponseSchema, { attempts: r.attempts.map(attemptToProto), nextPageToken: r.nextPageToken });
    },
  };
}
