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
import { QueryTypes, type Sequelize } from "sequelize";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Violations, failedPrecondition, invalidField, notFound, Reason } from "../errors.js";
import { maskField } from "../field-mask.js";
import type { SecretBox } from "../payments/secrets.js";
import { decodePageToken, pageOf, pageSize } from "../pagination.js";
import { checkText, requireUuid } from "../validation.js";
import { checkEventTypes, eventIdOf, uuidOfEventId, type Events } from "./events.js";
import { newSigningSecret } from "./webhook-signature.js";
import { checkWebhookHost, parseWebhookUrl } from "./webhook-url.js";

export type EndpointState = "healthy" | "failing";
export type DeliveryState = "pending" | "delivered" | "failed";

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
export const ENDPOINT_FIELDS = ["url", "description", "event_types", "enabled"] as const;
type EndpointField = (typeof ENDPOINT_FIELDS)[number];

const ENDPOINT_COLUMNS = `id::text AS id, url, description, event_types, enabled, state, created_by, created_at, updated_at,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key`;
const DELIVERY_COLUMNS = `account_id, id::text AS id, event_id::text AS event_id, event_type, endpoint_id::text AS endpoint_id, state, attempts,
  last_status, last_error, last_latency_ms, next_attempt_at, delivered_at, created_at,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_key`;

interface EndpointRow {
  id: string;
  url: string;
  description: string;
  event_types: string[];
  enabled: boolean;
  state: EndpointState;
  created_by: string;
  created_at: Date;
  updated_at: Date;
  created_key: string;
}

interface DeliveryRow {
  account_id: string;
  id: string;
  event_id: string;
  event_type: string;
  endpoint_id: string;
  state: DeliveryState;
  attempts: number;
  last_status: number;
  last_error: string;
  last_latency_ms: number;
  next_attempt_at: Date;
  delivered_at: Date | null;
  created_at: Date;
  created_key: string;
}

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
      async (t) => {
        const [r] = await this.sequelize.query<EndpointRow>(
          `INSERT INTO webhook_endpoints (url, description, event_types, enabled, secret_encrypted, created_by)
           VALUES ($1, $2, $3::text[], $4, $5, $6) RETURNING ${ENDPOINT_COLUMNS}`,
          { bind: [url!.href, input.description, types!, !input.disabled, this.secrets.encrypt(signingSecret), actor], transaction: t, type: QueryTypes.SELECT },
        );
        return r!;
      },
      options,
    );
    return { endpoint: endpointView(row), signingSecret };
  }

  /** One endpoint, or NOT_FOUND. */
  async get(endpointId: string): Promise<WebhookEndpointView> {
    const id = requireUuid(endpointId, "endpoint_id");
    const [row] = await this.sequelize.query<EndpointRow>(`SELECT ${ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1`, { bind: [id], type: QueryTypes.SELECT });
    if (!row) throw notFound("webhook endpoint", endpointId);
    return endpointView(row);
  }

  /** Endpoints, oldest first. */
  async list(requestedPageSize: number, pageToken: string): Promise<{ endpoints: WebhookEndpointView[]; nextPageToken: string }> {
    const size = pageSize(requestedPageSize);
    const after = decodePageToken(pageToken, "webhook_endpoints", {});
    const bind: unknown[] = [];
    let keyset = "";
    if (after) {
      const [created, id] = after;
      if (typeof created !== "string" || typeof id !== "string") throw invalidField("page_token", "is not a valid page token for this request");
      keyset = `WHERE (created_at, id) > ($${bind.push(created)}::timestamptz, $${bind.push(id)}::uuid)`;
    }
    const rows = await this.sequelize.query<EndpointRow>(`SELECT ${ENDPOINT_COLUMNS} FROM webhook_endpoints ${keyset} ORDER BY created_at, id LIMIT $${bind.push(size + 1)}`, {
      bind,
      type: QueryTypes.SELECT,
    });
    const page = pageOf(rows, size, (r) => [r.created_key, r.id], "webhook_endpoints", {});
    return { endpoints: page.items.map(endpointView), nextPageToken: page.nextPageToken };
  }

  /** Changes the masked fields (empty mask: the fields set to non-default values). */
  async update(input: UpdateEndpointInput, paths: string[], options: TransactionOptions = {}): Promise<WebhookEndpointView> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(input.id, "endpoint.id"));
    const fields = v.collect(() =>
      paths.length
        ? [...new Set(paths.map((p) => maskField(p, "endpoint", ENDPOINT_FIELDS)))]
        : ENDPOINT_FIELDS.filter((f) => (f === "url" ? input.url !== "" : f === "description" ? input.description !== "" : f === "event_types" ? input.eventTypes.length > 0 : input.enabled)),
    );
    if (fields && fields.length === 0) v.add("update_mask", "names no field to update");
    const set: Partial<Record<EndpointField, unknown>> = {};
    for (const f of fields ?? []) {
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
        const bind: unknown[] = [id!];
        const assignments = ["updated_at = now()"];
        if ("url" in set) assignments.push(`url = $${bind.push(set.url)}`);
        if ("description" in set) assignments.push(`description = $${bind.push(set.description)}`);
        if ("event_types" in set) assignments.push(`event_types = $${bind.push(set.event_types)}::text[]`);
        if ("enabled" in set) {
          assignments.push(`enabled = $${bind.push(set.enabled)}`);
          // Enabling is the admin's "it is fixed": a FAILING endpoint starts HEALTHY again.
          if (set.enabled) assignments.push(`state = 'healthy'`);
        }
        const [r] = await this.sequelize.query<EndpointRow>(`UPDATE webhook_endpoints SET ${assignments.join(", ")} WHERE id = $1 RETURNING ${ENDPOINT_COLUMNS}`, {
          bind,
          transaction: t,
          type: QueryTypes.SELECT,
        });
        if (!r) throw notFound("webhook endpoint", input.id);
        if (set.enabled === false) {
          await this.sequelize.query(
            `UPDATE webhook_deliveries SET state = 'failed', last_error = 'endpoint disabled', lease_until = NULL, updated_at = now()
             WHERE endpoint_id = $1 AND state = 'pending'`,
            { bind: [id!], transaction: t },
          );
        }
        return r;
      },
      options,
    );
    return endpointView(row);
  }

  /** Removes an endpoint with its deliveries (pending ones are dropped). */
  async delete(endpointId: string, options: TransactionOptions = {}): Promise<void> {
    const id = requireUuid(endpointId, "endpoint_id");
    const deleted = await inTransaction(
      this.sequelize,
      (t) => this.sequelize.query<{ id: string }>(`DELETE FROM webhook_endpoints WHERE id = $1 RETURNING id`, { bind: [id], transaction: t, type: QueryTypes.SELECT }),
      options,
    );
    if (deleted.length === 0) throw notFound("webhook endpoint", endpointId);
  }

  /** The delivery log, newest first. */
  async listDeliveries(input: ListDeliveriesInput): Promise<{ deliveries: WebhookDeliveryView[]; nextPageToken: string }> {
    const v = new Violations();
    const endpointId = input.endpointId === "" ? "" : v.collect(() => requireUuid(input.endpointId, "endpoint_id"));
    const eventUuid = input.eventId === "" ? "" : v.collect(() => uuidOfEventId(input.eventId, "event_id"));
    const size = v.collect(() => pageSize(input.pageSize));
    v.throwIfAny();
    const states = [...new Set(input.states)].sort();
    const filters = { e: endpointId, v: eventUuid, s: states };
    const after = decodePageToken(input.pageToken, "webhook_deliveries", filters);
    const where: string[] = [];
    const bind: unknown[] = [];
    if (endpointId) where.push(`endpoint_id = $${bind.push(endpointId)}`);
    if (eventUuid) where.push(`event_id = $${bind.push(eventUuid)}`);
    if (states.length) where.push(`state = ANY($${bind.push(states)}::text[])`);
    if (after) {
      const [created, id] = after;
      if (typeof created !== "string" || typeof id !== "string") throw invalidField("page_token", "is not a valid page token for this request");
      where.push(`(created_at, id) < ($${bind.push(created)}::timestamptz, $${bind.push(id)}::uuid)`);
    }
    const rows = await this.sequelize.query<DeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM webhook_deliveries ${where.length ? "WHERE " + where.join(" AND ") : ""}
       ORDER BY created_at DESC, id DESC LIMIT $${bind.push(size! + 1)}`,
      { bind, type: QueryTypes.SELECT },
    );
    const page = pageOf(rows, size!, (r) => [r.created_key, r.id], "webhook_deliveries", filters);
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
          const [e] = await this.sequelize.query<{ enabled: boolean }>(`SELECT enabled FROM webhook_endpoints WHERE id = $1 FOR SHARE`, { bind: [endpoint], transaction: t, type: QueryTypes.SELECT });
          if (!e) throw notFound("webhook endpoint", endpointId);
          if (!e.enabled) throw invalidField("endpoint_id", "names a disabled endpoint; enable it first (nothing is sent to a disabled endpoint)");
        }
        const rows = await this.sequelize.query<DeliveryRow>(
          `INSERT INTO webhook_deliveries (account_id, event_id, event_type, endpoint_id)
           SELECT $1::varchar, $2::uuid, $3::varchar, e.id FROM webhook_endpoints e
           WHERE e.enabled AND ${endpoint ? "e.id = $4::uuid" : "(cardinality(e.event_types) = 0 OR $3::text = ANY (e.event_types))"}
           ORDER BY e.created_at, e.id
           RETURNING ${DELIVERY_COLUMNS}`,
          { bind: endpoint ? [event.accountId, eventUuid, event.type, endpoint] : [event.accountId, eventUuid, event.type], transaction: t, type: QueryTypes.SELECT },
        );
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
