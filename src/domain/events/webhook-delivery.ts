/**
 * Outbound webhook delivery: sends the pending rows of webhook_deliveries
 * (written by billing_events_fan_out in the event's own transaction, or by
 * RedeliverEvent) to their endpoints, at least once.
 *
 * - Claiming: one statement picks due rows `FOR UPDATE SKIP LOCKED`, counts
 *   the attempt and leases them for WEBHOOK_TIMEOUT_MS + 5 s, so replicas
 *   never send the same row at once, and a replica that dies mid-send
 *   leaves a lease that expires: the row is sent again (at least once).
 *   Reading and decrypting may take a while under pool pressure, so the
 *   lease is renewed right before the POST, fenced by the attempt count:
 *   a claim whose lease ran out and was taken over sends nothing.
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
import type { Sequelize } from "sequelize";
import { markEndpointFailing, markEndpointHealthy } from "../../db/events/webhook-endpoints.js";
import { claimDue, insertAttempt, markAttemptFailed, markDelivered, renewLease, skipDisabled, type ClaimedDelivery } from "../../db/events/webhook-deliveries.js";
import { inTransaction } from "../../db/transaction.js";
import type { WebhookSettings } from "../../config.js";
import type { SecretBox } from "../payments/secrets.js";
import { eventIdOf, type EventView, type Events } from "./events.js";
import { signWebhook } from "./webhook-signature.js";
import { BlockedAddressError, isPrivateAddress, publicOnlyLookup } from "./webhook-url.js";

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

/** The answer (or failure) of one POST. */
export interface SendResult {
  /** HTTP status; 0 when none arrived. */
  status: number;
  /** Empty on a 2xx. */
  error: string;
  latencyMs: number;
}

/** The nominal wait after failed attempt `attempt` (1-based), before jitter. */
function retryDelayMs(attempt: number, s: Pick<WebhookSettings, "retryBaseMs" | "retryMaxDelayMs">): number {
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

  private launch(c: ClaimedDelivery): void {
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
  private claim(limit: number): Promise<ClaimedDelivery[]> {
    return claimDue(this.sequelize, limit, this.leaseMs());
  }

  /** How long a claim (or its renewal) holds a delivery: one attempt's timeout and time to record its outcome. */
  private leaseMs(): number {
    return this.o.settings.timeoutMs + LEASE_MARGIN_MS;
  }

  /** Sends one claimed delivery and records what came of it. */
  private async deliver(c: ClaimedDelivery): Promise<void> {
    if (!c.enabled) {
      // Nothing is sent to a disabled endpoint; RedeliverEvent sends it again once enabled.
      await skipDisabled(this.sequelize, c);
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
        // The read may have outlasted the lease: renew it, or leave the delivery to the claim that took it over.
        if (!(await renewLease(this.sequelize, c, this.leaseMs()))) {
          this.o.log.debug("webhook delivery: the lease ran out before the send; another claim has it", { delivery_id: c.id, event_id: eventId });
          return;
        }
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

  private async record(c: ClaimedDelivery, eventId: string, r: SendResult): Promise<void> {
    const ok = r.status >= 200 && r.status < 300;
    const final = !ok && c.attempts >= this.o.settings.maxAttempts;
    const nominal = retryDelayMs(c.attempts, this.o.settings);
    const delay = Math.round(nominal * (0.5 + Math.random() * 0.5));
    const error = r.error.slice(0, MAX_ERROR);
    const latency = Math.min(Math.max(0, Math.round(r.latencyMs)), 2_147_483_647);
    const outcome: DeliveryOutcome = ok ? "delivered" : final ? "failed" : "retrying";
    const recorded = { status: r.status, error, latencyMs: latency };
    await inTransaction(this.sequelize, async (t) => {
      await insertAttempt(this.sequelize, t, c, recorded);
      if (ok) {
        // A success counts even if the delivery was meanwhile re-leased or marked failed: it did get through.
        await markDelivered(this.sequelize, t, c, recorded);
        await markEndpointHealthy(this.sequelize, t, c.endpoint_id);
        return;
      }
      // A failure only moves the delivery on if no later claim has taken it over.
      if ((await markAttemptFailed(this.sequelize, t, c, recorded, final, delay)) && final) await markEndpointFailing(this.sequelize, t, c.endpoint_id);
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
