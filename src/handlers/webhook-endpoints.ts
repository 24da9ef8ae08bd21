/**
 * EventService's webhook RPCs (endpoints, delivery log, redelivery).
 * Placeholder: filled in by the webhook delivery work; until then these RPCs
 * answer UNIMPLEMENTED.
 */
import type { ServiceImpl } from "@connectrpc/connect";
import type { EventService } from "../../gen/billing/v1/event_service_pb.js";

// eslint-disable-next-line @typescript-eslint/no-empty-interface
export interface WebhookEndpointDeps {}

export function createWebhookEndpointHandlers(_d: WebhookEndpointDeps): Partial<ServiceImpl<typeof EventService>> {
  return {};
}
