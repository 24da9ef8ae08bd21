/**
 * EventService's webhook RPCs (endpoints, delivery log, redelivery): proto
 * <-> domain mapping only; the rules are in
 * src/domain/events/webhook-endpoints.ts.
 */
import { create } from "@bufbuild/protobuf";
import type { HandlerContext, ServiceImpl } from "@connectrpc/connect";
import {
  CreateWebhookEndpointResponseSchema,
  DeleteWebhookEndpointResponseSchema,
  GetWebhookEndpointResponseSchema,
  ListWebhookDeliveriesResponseSchema,
  ListWebhookEndpointsResponseSchema,
  RedeliverEventResponseSchema,
  UpdateWebhookEndpointResponseSchema,
  WebhookDeliverySchema,
  WebhookDeliveryState,
  WebhookEndpointSchema,
  WebhookEndpointState,
  type EventService,
  type WebhookDelivery,
  type WebhookEndpoint,
} from "../../gen/billing/v1/event_service_pb.js";
import type { DeliveryState, EndpointState, WebhookDeliveryView, WebhookEndpointView, WebhookEndpoints } from "../domain/events/webhook-endpoints.js";
import { principalOf } from "../auth/principal.js";
import { enumToProto, enumsFromProto, ts, txOptions } from "./convert.js";

export interface WebhookEndpointDeps {
  webhookEndpoints: WebhookEndpoints;
}

const ENDPOINT_STATES: [WebhookEndpointState, EndpointState][] = [
  [WebhookEndpointState.HEALTHY, "healthy"],
  [WebhookEndpointState.FAILING, "failing"],
];

const DELIVERY_STATES: [WebhookDeliveryState, DeliveryState][] = [
  [WebhookDeliveryState.PENDING, "pending"],
  [WebhookDeliveryState.DELIVERED, "delivered"],
  [WebhookDeliveryState.FAILED, "failed"],
];

function endpointToProto(e: WebhookEndpointView): WebhookEndpoint {
  return create(WebhookEndpointSchema, {
    id: e.id,
    url: e.url,
    description: e.description,
    eventTypes: e.eventTypes,
    enabled: e.enabled,
    state: enumToProto(ENDPOINT_STATES, e.state),
    createdBy: e.createdBy,
    createdAt: ts(e.createdAt),
    updatedAt: ts(e.updatedAt),
  });
}

function deliveryToProto(d: WebhookDeliveryView): WebhookDelivery {
  return create(WebhookDeliverySchema, {
    id: d.id,
    eventId: d.eventId,
    eventType: d.eventType,
    endpointId: d.endpointId,
    state: enumToProto(DELIVERY_STATES, d.state),
    attempts: d.attempts,
    lastStatus: d.lastStatus,
    lastError: d.lastError,
    lastLatencyMs: d.lastLatencyMs,
    nextAttemptAt: ts(d.nextAttemptAt),
    deliveredAt: ts(d.deliveredAt),
    createdAt: ts(d.createdAt),
  });
}

export function createWebhookEndpointHandlers(d: WebhookEndpointDeps): Partial<ServiceImpl<typeof EventService>> {
  const endpoints = d.webhookEndpoints;
  return {
    async createWebhookEndpoint(req, ctx: HandlerContext) {
      const r = await endpoints.create({ url: req.url, description: req.description, eventTypes: req.eventTypes, disabled: req.disabled }, principalOf(ctx).name, txOptions(ctx));
      return create(CreateWebhookEndpointResponseSchema, { endpoint: endpointToProto(r.endpoint), signingSecret: r.signingSecret });
    },
    async getWebhookEndpoint(req) {
      return create(GetWebhookEndpointResponseSchema, { endpoint: endpointToProto(await endpoints.get(req.endpointId)) });
    },
    async listWebhookEndpoints(req) {
      const r = await endpoints.list(req.pageSize, req.pageToken);
      return create(ListWebhookEndpointsResponseSchema, { endpoints: r.endpoints.map(endpointToProto), nextPageToken: r.nextPageToken });
    },
    async updateWebhookEndpoint(req, ctx: HandlerContext) {
      const e = req.endpoint;
      const r = await endpoints.update(
        { id: e?.id ?? "", url: e?.url ?? "", description: e?.description ?? "", eventTypes: e?.eventTypes ?? [], enabled: e?.enabled ?? false },
        req.updateMask?.paths ?? [],
        txOptions(ctx),
      );
      return create(UpdateWebhookEndpointResponseSchema, { endpoint: endpointToProto(r) });
    },
    async deleteWebhookEndpoint(req, ctx: HandlerContext) {
      await endpoints.delete(req.endpointId, txOptions(ctx));
      return create(DeleteWebhookEndpointResponseSchema, {});
    },
    async listWebhookDeliveries(req) {
      const r = await endpoints.listDeliveries({
        endpointId: req.endpointId,
        eventId: req.eventId,
        states: enumsFromProto(DELIVERY_STATES, req.states, "states"),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListWebhookDeliveriesResponseSchema, { deliveries: r.deliveries.map(deliveryToProto), nextPageToken: r.nextPageToken });
    },
    async redeliverEvent(req, ctx: HandlerContext) {
      const r = await endpoints.redeliver(req.eventId, req.endpointId, txOptions(ctx));
      return create(RedeliverEventResponseSchema, { deliveries: r.map(deliveryToProto) });
    },
  };
}
