/**
 * AutomationService's auto top-up RPCs. Placeholder: filled in by the auto
 * top-up work; until then these RPCs answer UNIMPLEMENTED.
 */
import type { ServiceImpl } from "@connectrpc/connect";
import type { AutomationService } from "../../gen/billing/v1/automation_service_pb.js";

// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface AutoTopUpDeps {}

export function createAutoTopUpHandlers(_d: AutoTopUpDeps): Partial<ServiceImpl<typeof AutomationService>> {
  return {};
}
