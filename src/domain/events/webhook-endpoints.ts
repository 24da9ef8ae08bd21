/**
 * Webhook endpoints (registered by admins), their delivery log, and
 * redelivery. Sending is webhook-delivery.ts's job; this file only writes
 * the rows it sends.
 *
 * Rules:
 * - A URL is absolute http(s), at most 2048 characters, without
 *   credentials or fragment, stored normalised; unless
 *   WEBHOOK_ALLOW_PRIVATE_URLS is on it must not be (or resolve to) a
 *   loopback, private, link-local or metadata address (webhook-url.ts).
 * - The signing secret is made here, returned once by create, and stored
 *   encrypted (SecretBox, BILLING_SECRET_KEY); nothing else ever returns it.
 * - Disabling an endpoint fails its pending deliveries ("endpoint disabled");
 *   enabling a FAILING endpoint makes it HEALTHY again.
 * - Deleting an endpoint deletes its deliveries and their attempts.
 * - RedeliverEvent writes new PENDING deliveries of the same event (same
 *   webhook-id) to one endpoint (subscribed or not) or to every enabled
 *   subscribed endpoint.
 */
import type { Sequelize } from "sequelize";
import { deleteEndpoint, endpointById, endpointEnabled, endpointsAfter, insertEndpoint, updateEndpoint, type EndpointChanges, type EndpointRow, type EndpointState } from "../../db/events/webhook-endpoints.js";
import { deliveriesOf, failPendingOf, insertRedeliveries, type DeliveryRow, type DeliveryState } from "../../db/events/webhook-deliveries.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Violations, failedPrecondition, invalidField, notFound, Reason } from "../errors.js";
import { applyMask } from "../field-mask.js";
import type { SecretBox } from "../payments/secrets.js";
import { pageOf, pageRequest, pageSize } from "../pagination.js";
import { checkText, requireUuid } from "../validation.js";
import { checkEventTypes, eventIdOf, uuidOfEventId, type Events } from "./events.js";
import { newSigningSecret } from "./webhook-signature.js";
import { checkWebhookHost, parseWebhookUrl } from "./webhook-url.js";

export type { DeliveryState, EndpointState };

/** One endpoint as callers see it (never its secret). */
export interface WebhookEndpointView {
  id: string;
  url: string;
  description: string;
  eventTypes: string[];
  enabled: boolean;
  state: EndpointState;
  createdBy: string;
  createdAt: Date;
  updatedAt: Date;
}

/** One delivery and how its attempts went. */
export interface WebhookDeliveryView {
  id: string;
  /** "evt_…": the webhook-id it is sent with. */
  eventId: string;
  eventType: string;
  endpointId: string;
  state: DeliveryState;
  attempts: number;
  lastStatus: number;
  lastError: string;
  lastLatencyMs: number;
  nextAttemptAt?: Date;
  deliveredAt?: Date;
  createdAt: Date;
}

export interface CreateEndpointInput {
  url: string;
  description: string;
  eventTypes: string[];
  disabled: boolean;
}

export interface UpdateEndpointInput {
  id: string;
  url: string;
  description: string;
  eventTypes: string[];
  enabled: boolean;
}

export interface ListDeliveriesInput {
  endpointId: string;
  eventId: string;
  states: DeliveryState[];
  pageSize: number;
  pageToken: string;
}

/** Fields UpdateWebhookEndpoint can change. */
const ENDPOINT_FIELDS = ["url", "description", "event_types", "enabled"] as const;

/** Webhook endpoints, the delivery log and redelivery. */
export class WebhookEndpoints {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly secrets: SecretBox,
    private readonly events: Events,
    private readonly allowPrivateUrls: boolean,
  ) {}

  /** Registers an endpoint; the signing secret is returned here only. */
  async create(input: CreateEndpointInput, actor: string, options: TransactionOptions = {}): Promise<{ endpoint: WebhookEndpointView; signingSecret: string }> {
    const v = new Violations();
    const url = v.collect(() => parseWebhookUrl(input.url, "url"));
    v.collect(() => checkText(input.description, "description"));
    const types = v.collect(() => checkEventTypes(input.eventTypes, "event_types"));
    if (url) await v.collectAsync(() => checkWebhookHost(url, "url", this.allowPrivateUrls));
    v.throwIfAny();
    if (!this.secrets.configured) throw failedPrecondition(Reason.SecretKeyMissing, "BILLING_SECRET_KEY is not configured, so webhook signing secrets cannot be stored");
    const signingSecret = newSigningSecret();
    const row = await inTransaction(
      this.sequelize,
      (t) =>
        insertEndpoint(this.sequelize, t, {
          url: url!.href,
          description: input.description,
          eventTypes: types!,
          enabled: !input.disabled,
          secretEncrypted: this.secrets.encrypt(signingSecret),
          createdBy: actor,
        }),
      options,
    );
    return { endpoint: endpointView(row), signingSecret };
  }

  /** One endpoint, or NOT_FOUND. */
  async get(endpointId: string): Promise<WebhookEndpointView> {
    const row = await endpointById(this.sequelize, requireUuid(endpointId, "endpoint_id"));
    if (!row) throw notFound("webhook endpoint", endpointId);
    return endpointView(row);
  }

  /** Endpoints, oldest first. */
  async list(requestedPageSize: number, pageToken: string): Promise<{ endpoints: WebhookEndpointView[]; nextPageToken: string }> {
    const { size, after } = pageRequest({ pageSize: requestedPageSize, pageToken }, "webhook_endpoints", {}, ["timestamp", "uuid"]);
    const rows = await endpointsAfter(this.sequelize, after as [string, string] | undefined, size + 1);
    const page = pageOf(rows, size, (r) => [r.created_key, r.id], "webhook_endpoints", {});
    return { endpoints: page.items.map(endpointView), nextPageToken: page.nextPageToken };
  }

  /** Changes the masked fields (empty mask: the fields set to non-default values). */
  async update(input: UpdateEndpointInput, paths: string[], options: TransactionOptions = {}): Promise<WebhookEndpointView> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(input.id, "endpoint.id"));
    const populated = { url: input.url, description: input.description, event_types: input.eventTypes, enabled: input.enabled };
    const fields = v.collect(() => applyMask(paths, "endpoint", ENDPOINT_FIELDS, populated)) ?? [];
    const set: EndpointChanges = {};
    for (const f of fields) {
      switch (f) {
        case "url": {
          const url = v.collect(() => parseWebhookUrl(input.url, "endpoint.url"));
          if (url) {
            await v.collectAsync(() => checkWebhookHost(url, "endpoint.url", this.allowPrivateUrls));
            set.url = url.href;
          }
          break;
        }
        case "description":
          if (v.collect(() => checkText(input.description, "endpoint.description")) !== undefined) set.description = input.description;
          break;
        case "event_types":
          set.event_types = v.collect(() => checkEventTypes(input.eventTypes, "endpoint.event_types"));
          break;
        case "enabled":
          set.enabled = input.enabled;
          break;
      }
    }
    v.throwIfAny();
    const row = await inTransaction(
      this.sequelize,
      async (t) => {
        // Enabling is the admin's "it is fixed": a FAILING endpoint starts HEALTHY again (the adapter does it).
        const r = await updateEndpoint(this.sequelize, t, id!, set);
        if (!r) throw notFound("webhook endpoint", input.id);
        if (set.enabled === false) await failPendingOf(this.sequelize, t, id!);
        return r;
      },
      options,
    );
    return endpointView(row);
  }

  /** Removes an endpoint with its deliveries (pending ones are dropped). */
  async delete(endpointId: string, options: TransactionOptions = {}): Promise<void> {
    const id = requireUuid(endpointId, "endpoint_id");
    const deleted = await inTransaction(this.sequelize, (t) => deleteEndpoint(this.sequelize, t, id), options);
    if (!deleted) throw notFound("webhook endpoint", endpointId);
  }

  /** The delivery log, newest first. */
  async listDeliveries(input: ListDeliveriesInput): Promise<{ deliveries: WebhookDeliveryView[]; nextPageToken: string }> {
    const v = new Violations();
    const endpointId = input.endpointId === "" ? "" : v.collect(() => requireUuid(input.endpointId, "endpoint_id"));
    const eventUuid = input.eventId === "" ? "" : v.collect(() => uuidOfEventId(input.eventId, "event_id"));
    v.collect(() => pageSize(input.pageSize));
    v.throwIfAny();
    const states = [...new Set(input.states)].sort();
    const filters = { e: endpointId, v: eventUuid, s: states };
    const { size, after } = pageRequest(input, "webhook_deliveries", filters, ["timestamp", "uuid"]);
    const rows = await deliveriesOf(this.sequelize, { endpointId: endpointId!, eventId: eventUuid!, states, after: after as [string, string] | undefined, limit: size + 1 });
    const page = pageOf(rows, size, (r) => [r.created_key, r.id], "webhook_deliveries", filters);
    return { deliveries: page.items.map(deliveryView), nextPageToken: page.nextPageToken };
  }

  /**
   * Sends an event again (same webhook-id): to `endpointId` (enabled,
   * subscribed or not), or to every enabled endpoint subscribed to its type.
   */
  async redeliver(eventId: string, endpointId: string, options: TransactionOptions = {}): Promise<WebhookDeliveryView[]> {
    const v = new Violations();
    const eventUuid = v.collect(() => uuidOfEventId(eventId, "event_id"));
    const endpoint = endpointId === "" ? "" : v.collect(() => requireUuid(endpointId, "endpoint_id"));
    v.throwIfAny();
    const event = await this.events.get(eventId);
    return inTransaction(
      this.sequelize,
      async (t) => {
        if (endpoint) {
          const enabled = await endpointEnabled(this.sequelize, t, endpoint);
          if (enabled === undefined) throw notFound("webhook endpoint", endpointId);
          if (!enabled) throw invalidField("endpoint_id", "names a disabled endpoint; enable it first (nothing is sent to a disabled endpoint)");
        }
        const rows = await insertRedeliveries(this.sequelize, t, { accountId: event.accountId, eventId: eventUuid!, eventType: event.type }, endpoint || undefined);
        return rows.map(deliveryView);
      },
      options,
    );
  }
}

function endpointView(r: EndpointRow): WebhookEndpointView {
  return {
    id: r.id,
    url: r.url,
    description: r.description,
    eventTypes: r.event_types,
    enabled: r.enabled,
    state: r.state,
    createdBy: r.created_by,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
  };
}

function deliveryView(r: DeliveryRow): WebhookDeliveryView {
  return {
    id: r.id,
    eventId: eventIdOf(r.event_id),
    eventType: r.event_type,
    endpointId: r.endpoint_id,
    state: r.state,
    attempts: r.attempts,
    lastStatus: r.last_status,
    lastError: r.last_error,
    lastLatencyMs: r.last_latency_ms,
    nextAttemptAt: r.state === "pending" ? r.next_attempt_at : undefined,
    deliveredAt: r.delivered_at ?? undefined,
    createdAt: r.created_at,
  };
}
