/**
 * EventService: proto <-> domain mapping for events (ListEvents,
 * WatchEvents) and, from webhook-endpoints.ts, webhook endpoints and their
 * deliveries. No rules here.
 */
import { create, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  EventSchema,
  EventService,
  ListEventsResponseSchema,
  WatchEventsResponseSchema,
  type Event,
} from "../../gen/billing/v1/event_service_pb.js";
import type { EventView, Events } from "../domain/events/events.js";
import type { EventFeed } from "../domain/events/feed.js";
import { dateOf, ts } from "./convert.js";
import { createWebhookEndpointHandlers, type WebhookEndpointDeps } from "./webhook-endpoints.js";

export interface EventServiceDeps extends WebhookEndpointDeps {
  events: Events;
  feed: EventFeed;
}

/** The proto form of an event. */
function eventToProto(e: EventView): Event {
  const data = e.data;
  const withTimes = (v: Record<string, unknown>) => Object.fromEntries(Object.entries(v).map(([k, x]) => [k, x instanceof Date ? ts(x) : x]));
  return create(EventSchema, {
    id: e.id,
    type: e.type,
    accountId: e.accountId,
    createdAt: ts(e.createdAt),
    data: { case: data.case, value: withTimes(data.value) } as Event["data"],
  });
}

/** The webhook body of an event: the Event in the canonical proto3 JSON mapping. */
export function eventJson(e: EventView): string {
  return toJsonString(EventSchema, eventToProto(e));
}

export function createEventServiceHandler(d: EventServiceDeps): Partial<ServiceImpl<typeof EventService>> {
  return {
    ...createWebhookEndpointHandlers(d),
    async listEvents(req) {
      const page = await d.events.list({
        accountId: req.accountId,
        types: req.types,
        startTime: dateOf(req.startTime, "start_time"),
        endTime: dateOf(req.endTime, "end_time"),
        pageSize: req.pageSize,
        pageToken: req.pageToken,
      });
      return create(ListEventsResponseSchema, { events: page.events.map(eventToProto), nextPageToken: page.nextPageToken, cursor: page.cursor });
    },
    async *watchEvents(req, ctx: HandlerContext) {
      const watch = await d.events.startWatch({ accountId: req.accountId, types: req.types, cursor: req.cursor });
      for await (const event of d.feed.follow(watch.filter, watch.cursor, ctx.signal)) {
        yield create(WatchEventsResponseSchema, { event: eventToProto(event), cursor: event.cursor });
      }
      // The feed ends only when the signal aborts: the caller left or the server is shutting down.
      throw new ConnectError("the server is shutting down; watch again (with the last cursor) on another instance", Code.Unavailable);
    },
  };
}
