/**
 * Outbound webhook delivery: sends the pending rows of webhook_deliveries
 * (written by billing_events_fan_out in the event's own transaction, or by
 * RedeliverEvent) to their endpoints, at least once.
 *
 * - Claiming: one statement picks due rows `FOR UPDATE SKIP LOCKED`, counts
 *   the attempt and leases them for WEBHOOK_TIMEOUT_MS + 5 s, so replicas
 *   never send the same row at once, and a replica that dies mid-send
 *   leaves a lease that expires: the row is sent again (at least once).
 * - Sending happens outside any transaction, with a hard timeout, to the
 *   address the SSRF check approved (webhook-url.ts).
 * - Recording: an attempt row, then the delivery DELIVERED (2xx), or PENDING
 *   again after an exponential backoff with jitter, or FAILED after
 *   WEBHOOK_MAX_ATTEMPTS, which marks the endpoint FAILING.
 *
 * The worker polls every WEBHOOK_POLL_MS (immediately again while rows keep
 * coming), sends at most WEBHOOK_CONCURRENCY at once, and never runs inside a
 * request: a slow endpoint delays only its own deliveries.
 */
import http from "node:http";
import https from "node:https";
import net from "node:net";
import { QueryTypes, type Sequelize } from "sequelize";
import { inTransaction } from "../../db/transaction.js";
import type { SecretBox } from "../payments/secrets.js";
import { eventIdOf, type EventView, type Events } from "./events.js";
import { signWebhook } from "./webhook-signature.js";
import { BlockedAddressError, isPrivateAddress, publicOnlyLookup } from "./webhook-url.js";

/** WEBHOOK_* settings (README, "Configuration"). */
export interface WebhookSettings {
  /** WEBHOOK_ALLOW_PRIVATE_URLS: allow loopback/private/link-local targets (tests, private networks). */
  allowPrivateUrls: boolean;
  /** WEBHOOK_POLL_MS: how often each replica looks for due deliveries. */
  pollMs: number;
  /** WEBHOOK_TIMEOUT_MS: one attempt's limit, connect to last byte of the answer. */
  timeoutMs: number;
  /** WEBHOOK_MAX_ATTEMPTS: attempts before a delivery is FAILED (and its endpoint FAILING). */
  maxAttempts: number;
  /** WEBHOOK_RETRY_BASE_MS: the wait after the first failed attempt; it doubles after each further one. */
  retryBaseMs: number;
  /** WEBHOOK_RETRY_MAX_DELAY_MS: the longest wait between two attempts. */
  retryMaxDelayMs: number;
  /** WEBHOOK_CONCURRENCY: sends in flight at once per replica. */
  concurrency: number;
}

/**
 * Defaults: 14 attempts with waits of 30 s, 1, 2, 4, 8, 16, 32, 64, 128,
 * 256 min, then 6 h three times (each wait jittered to 50-100 %): a
 * delivery is retried for about 13-26 hours before it fails.
 */
export const DEFAULT_WEBHOOK_SETTINGS: WebhookSettings = {
  allowPrivateUrls: false,
  pollMs: 500,
  timeoutMs: 10_000,
  maxAttempts: 14,
  retryBaseMs: 30_000,
  retryMaxDelayMs: 6 * 60 * 60 * 1000,
  concurrency: 16,
};

/** How much longer than one attempt's timeout a claim's lease lasts (time to record the outcome). */
const LEASE_MARGIN_MS = 5_000;
/** The longest error text kept on a delivery or attempt. */
const MAX_ERROR = 500;
/** How much of an answer's body is read (then the connection is closed). */
const MAX_ANSWER_BYTES = 64 * 1024;

/** What happened to one delivery attempt (for metrics). */
export type DeliveryOutcome = "delivered" | "retrying" | "failed" | "skipped";

/** Where the worker reports. Structurally a subset of the service's Logger. */
export interface DeliveryLog {
  debug(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

export interface WebhookDeliveryOptions {
  settings: WebhookSettings;
  events: Events;
  secrets: SecretBox;
  /** The request body of an event (the Event in canonical proto3 JSON); injected so the domain needs no proto types. */
  render: (event: EventView) => string;
  log: DeliveryLog;
  /** Called once per attempt's outcome (metrics). */
  onOutcome?: (outcome: DeliveryOutcome) => void;
  /** The `user-agent` header. */
  userAgent?: string;
}

interface Claimed {
  account_id: string;
  id: string;
  event_id: string;
  endpoint_id: string;
  attempts: number;
  url: string;
  secret_encrypted: string;
  enabled: boolean;
}

/** The answer (or failure) of one POST. */
export interface SendResult {
  /** HTTP status; 0 when none arrived. */
  status: number;
  /** Empty on a 2xx. */
  error: string;
  latencyMs: number;
}

/** The nominal wait after failed attempt `attempt` (1-based), before jitter. */
export function retryDelayMs(attempt: number, s: Pick<WebhookSettings, "retryBaseMs" | "retryMaxDelayMs">): number {
  return Math.min(s.retryBaseMs * 2 ** Math.min(attempt - 1, 40), s.retryMaxDelayMs);
}

/** The delivery worker of one replica. */
export class WebhookDelivery {
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private ticking = false;
  private saturated = false;
  private readonly inFlight = new Set<Promise<void>>();
  /** Aborts sends still running when stop()'s grace period ends. */
  private abort = new AbortController();

  constructor(
    private readonly sequelize: Sequelize,
    private readonly o: WebhookDeliveryOptions,
  ) {}

  /** Starts polling. */
  start(): void {
    if (this.running) return;
    this.running = true;
    this.abort = new AbortController();
    this.schedule(this.o.settings.pollMs);
  }

  /**
   * Stops claiming, lets sends in flight finish for up to `graceMs`, then
   * aborts the rest (recorded as failed attempts, retried later by any replica).
   */
  async stop(graceMs = 10_000): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    const pending = Promise.all([...this.inFlight]);
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([pending, new Promise<void>((r) => (grace = setTimeout(r, graceMs)))]);
    clearTimeout(grace);
    this.abort.abort();
    await pending;
    // A tick that was claiming when stop() began has launched its sends by now.
    while (this.ticking || this.inFlight.size > 0) await Promise.all([...this.inFlight, new Promise((r) => setTimeout(r, 10))]);
  }

  /** Claims and sends what is due now, once (also used by tests); resolves when those sends are recorded. */
  async runOnce(): Promise<number> {
    const claimed = await this.claim(this.o.settings.concurrency);
    await Promise.all(claimed.map((c) => this.deliver(c)));
    return claimed.length;
  }

  private schedule(ms: number): void {
    if (!this.running) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    if (this.ticking || !this.running) return;
    this.ticking = true;
    let next = this.o.settings.pollMs;
    try {
      const room = this.o.settings.concurrency - this.inFlight.size;
      this.saturated = room <= 0;
      if (room > 0) {
        const claimed = await this.claim(room);
        for (const c of claimed) this.launch(c);
        // A full batch: more may be due; look again as soon as a slot is free.
        if (claimed.length === room) {
          this.saturated = true;
          next = this.o.settings.pollMs;
        }
      }
    } catch (err) {
      this.o.log.warn("webhook delivery: claiming failed", { error: messageOf(err) });
      next = Math.min(this.o.settings.pollMs * 10, 5_000);
    } finally {
      this.ticking = false;
      this.schedule(next);
    }
  }

  private launch(c: Claimed): void {
    const p: Promise<void> = this.deliver(c)
      .catch((err: unknown) => this.o.log.warn("webhook delivery: recording failed (the lease will expire and the delivery is retried)", { delivery_id: c.id, error: messageOf(err) }))
      .finally(() => {
        this.inFlight.delete(p);
        if (this.saturated) {
          this.saturated = false;
          this.schedule(0);
        }
      });
    this.inFlight.add(p);
  }

  /** Leases up to `limit` due deliveries, counting their attempt. */
  private claim(limit: number): Promise<Claimed[]> {
    const leaseMs = this.o.settings.timeoutMs + LEASE_MARGIN_MS;
    return this.sequelize.query<Claimed>(
      `WITH due AS (
         SELECT account_id, id FROM webhook_deliveries
         WHERE state = 'pending' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
         ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
       ), claimed AS (
         UPDATE webhook_deliveries d SET lease_until = clock_timestamp() + $1 * interval '1 millisecond', attempts = d.attempts + 1, updated_at = now()
         FROM due WHERE d.account_id = due.account_id AND d.id = due.id
         RETURNING d.account_id, d.id, d.event_id, d.endpoint_id, d.attempts
       )
       SELECT c.account_id, c.id, c.event_id::text AS event_id, c.endpoint_id::text AS endpoint_id, c.attempts, e.url, e.secret_encrypted, e.enabled
       FROM claimed c JOIN webhook_endpoints e ON e.id = c.endpoint_id`,
      { bind: [leaseMs, limit], type: QueryTypes.SELECT },
    );
  }

  /** Sends one claimed delivery and records what came of it. */
  private async deliver(c: Claimed): Promise<void> {
    if (!c.enabled) {
      // Nothing is sent to a disabled endpoint; RedeliverEvent sends it again once enabled.
      await this.sequelize.query(
        `UPDATE webhook_deliveries SET state = 'failed', attempts = attempts - 1, last_error = 'endpoint disabled', lease_until = NULL, updated_at = now()
         WHERE account_id = $1 AND id = $2 AND state = 'pending' AND attempts = $3`,
        { bind: [c.account_id, c.id, c.attempts] },
      );
      this.o.onOutcome?.("skipped");
      return;
    }
    const eventId = eventIdOf(c.event_id);
    let result: SendResult;
    const secret = this.o.secrets.decrypt(c.secret_encrypted);
    if (secret === undefined) {
      result = { status: 0, error: "the endpoint's signing secret cannot be decrypted (was BILLING_SECRET_KEY changed?)", latencyMs: 0 };
    } else {
      let body: string | undefined;
      try {
        body = this.o.render(await this.o.events.get(eventId));
      } catch (err) {
        result = { status: 0, error: `cannot read the event: ${messageOf(err)}`, latencyMs: 0 };
      }
      if (body !== undefined) {
        const timestamp = Math.floor(Date.now() / 1000);
        result = await sendWebhook(
          c.url,
          body,
          {
            "webhook-id": eventId,
            "webhook-timestamp": String(timestamp),
            "webhook-signature": signWebhook(secret, eventId, timestamp, body),
            ...(this.o.userAgent ? { "user-agent": this.o.userAgent } : {}),
          },
          { timeoutMs: this.o.settings.timeoutMs, allowPrivate: this.o.settings.allowPrivateUrls, signal: this.abort.signal },
        );
      }
    }
    await this.record(c, eventId, result!);
  }

  private async record(c: Claimed, eventId: string, r: SendResult): Promise<void> {
    const ok = r.status >= 200 && r.status < 300;
    const final = !ok && c.attempts >= this.o.settings.maxAttempts;
    const nominal = retryDelayMs(c.attempts, this.o.settings);
    const delay = Math.round(nominal * (0.5 + Math.random() * 0.5));
    const error = r.error.slice(0, MAX_ERROR);
    const latency = Math.min(Math.max(0, Math.round(r.latencyMs)), 2_147_483_647);
    const outcome: DeliveryOutcome = ok ? "delivered" : final ? "failed" : "retrying";
    await inTransaction(this.sequelize, async (t) => {
      await this.sequelize.query(
        `INSERT INTO webhook_attempts (account_id, delivery_id, attempt, status, error, latency_ms)
         SELECT $1::varchar, $2::uuid, $3::integer, $4::integer, $5::varchar, $6::integer
         WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE account_id = $1::varchar AND id = $2::uuid)`,
        { bind: [c.account_id, c.id, c.attempts, r.status, error, latency], transaction: t },
      );
      if (ok) {
        // A success counts even if the delivery was meanwhile re-leased or marked failed: it did get through.
        await this.sequelize.query(
          `UPDATE webhook_deliveries SET state = 'delivered', delivered_at = now(), last_status = $3, last_error = '', last_latency_ms = $4, lease_until = NULL, updated_at = now()
           WHERE account_id = $1 AND id = $2 AND state <> 'delivered'`,
          { bind: [c.account_id, c.id, r.status, latency], transaction: t },
        );
        await this.sequelize.query(`UPDATE webhook_endpoints SET state = 'healthy', updated_at = now() WHERE id = $1 AND state = 'failing'`, { bind: [c.endpoint_id], transaction: t });
        return;
      }
      // A failure only moves the delivery on if no later claim has taken it over (attempts is the fence).
      const rows = await this.sequelize.query<{ id: string }>(
        `UPDATE webhook_deliveries SET last_status = $3, last_error = $4, last_latency_ms = $5, lease_until = NULL, updated_at = now(),
           state = CASE WHEN $6::boolean THEN 'failed' ELSE 'pending' END,
           next_attempt_at = CASE WHEN $6::boolean THEN next_attempt_at ELSE now() + $7 * interval '1 millisecond' END
         WHERE account_id = $1 AND id = $2 AND state = 'pending' AND attempts = $8
         RETURNING id`,
        { bind: [c.account_id, c.id, r.status, error, latency, final, delay, c.attempts], transaction: t, type: QueryTypes.SELECT },
      );
      if (final && rows.length > 0) {
        await this.sequelize.query(`UPDATE webhook_endpoints SET state = 'failing', updated_at = now() WHERE id = $1 AND state <> 'failing'`, { bind: [c.endpoint_id], transaction: t });
      }
    });
    this.o.onOutcome?.(outcome);
    const fields = { delivery_id: c.id, event_id: eventId, endpoint_id: c.endpoint_id, attempt: c.attempts, status: r.status, latency_ms: latency, error: error || undefined };
    if (final) this.o.log.warn("webhook delivery failed for good; endpoint marked FAILING", fields);
    else this.o.log.debug(ok ? "webhook delivered" : "webhook attempt failed; will retry", ok ? fields : { ...fields, retry_in_ms: delay });
  }
}

/**
 * POSTs `body` to `url` with `headers`, within `timeoutMs` (connect to the
 * end of the answer). Unless `allowPrivate`, refuses a host that is, or
 * resolves to, a private address, checking the address actually connected to.
 * Never throws: failures come back as a result with `error` set.
 */
export function sendWebhook(
  url: string,
  body: string,
  headers: Record<string, string>,
  options: { timeoutMs: number; allowPrivate: boolean; signal?: AbortSignal },
): Promise<SendResult> {
  const started = performance.now();
  const elapsed = () => performance.now() - started;
  return new Promise<SendResult>((resolve) => {
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const done = (status: number, error: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
      resolve({ status, error, latencyMs: elapsed() });
    };
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      return done(0, "the endpoint URL is not valid");
    }
    const literal = target.hostname.replace(/^\[|\]$/g, "");
    if (!options.allowPrivate && net.isIP(literal) && isPrivateAddress(literal)) {
      return done(0, new BlockedAddressError(target.hostname, literal).message);
    }
    const client = target.protocol === "https:" ? https : http;
    const req = client.request(target, {
      method: "POST",
      agent: false,
      headers: { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), ...headers },
      ...(options.allowPrivate ? {} : { lookup: publicOnlyLookup }),
    });
    timer = setTimeout(() => {
      done(0, `timeout: no complete answer within ${options.timeoutMs} ms`);
      req.destroy();
    }, options.timeoutMs);
    const onAbort = () => {
      done(0, "aborted: the service is shutting down");
      req.destroy();
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener("abort", onAbort, { once: true });
    req.on("error", (err) => done(0, describeError(err)));
    req.on("response", (res) => {
      const status = res.statusCode ?? 0;
      let text = "";
      let read = 0;
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        read += chunk.length;
        if (text.length < 200) text += chunk.slice(0, 200 - text.length);
        if (read > MAX_ANSWER_BYTES) res.destroy();
      });
      const finish = () => {
        const ok = status >= 200 && status < 300;
        const snippet = text.replace(/[\u0000-\u001f\u007f]+/g, " ").trim();
        done(status, ok ? "" : `HTTP ${status}${res.statusMessage ? " " + res.statusMessage : ""}${snippet ? ": " + snippet : ""}`);
      };
      res.on("end", finish);
      res.on("close", finish);
      res.on("error", finish);
    });
    req.end(body);
  });
}

function describeError(err: Error & { code?: string }): string {
  if (err instanceof BlockedAddressError) return err.message;
  switch (err.code) {
    case "ECONNREFUSED":
      return `connection refused (${err.message})`;
    case "ECONNRESET":
      return "connection reset by the endpoint";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `the host name does not resolve (${err.code})`;
    case "ETIMEDOUT":
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return `cannot reach the endpoint (${err.code})`;
    default:
      return err.code ? `${err.code}: ${err.message}` : err.message;
  }
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
