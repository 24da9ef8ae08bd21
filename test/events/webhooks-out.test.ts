/**
 * Outbound webhooks, end to end: endpoints registered through EventService,
 * events written by real money-moving calls, delivered by the server's own
 * worker to a real HTTP receiver on 127.0.0.1 (the harness sets
 * WEBHOOK_ALLOW_PRIVATE_URLS, retries after ~0.2 s doubling, 3 attempts).
 *
 * Happy: a receiver that fails twice then succeeds gets the event three
 * times with the same webhook-id and a valid Standard Webhooks signature
 * each time; the delivery log shows it; redelivery sends the same id again.
 * Failure: out of retries the delivery is FAILED and the endpoint FAILING;
 * a rolled-back change (or a refused call) delivers nothing; a kill -9
 * between commit and delivery still delivers after restart; two extra
 * workers on the same database never send an event twice.
 * Security: secrets appear only in the create response; private and
 * loopback targets are refused by default, at registration and at send.
 */
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import { createHmac, randomUUID } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { QueryTypes } from "sequelize";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { EventService, WebhookDeliveryState, WebhookEndpointState } from "../../gen/billing/v1/event_service_pb.js";
import { Events } from "../../src/domain/events/events.js";
import { DEFAULT_WEBHOOK_SETTINGS } from "../../src/config.js";
import { WebhookDelivery, sendWebhook } from "../../src/domain/events/webhook-delivery.js";
import { WebhookEndpoints } from "../../src/domain/events/webhook-endpoints.js";
import { isPrivateAddress } from "../../src/domain/events/webhook-url.js";
import { BillingError } from "../../src/domain/errors.js";
import { SecretBox } from "../../src/domain/payments/secrets.js";
import { eventJson } from "../../src/handlers/event-service.js";
import { RECORDED_RESPONSES, TEST_SECRET_KEY, TOKENS, badFields, client, expectError, harness, key, newAccount } from "../harness.js";
import { freePort, sleep, spawnService, type ServiceProcess } from "../ops/util.js";

// ------------------------------------------------------------------ helpers

interface Received {
  headers: http.IncomingHttpHeaders;
  body: string;
  at: number;
}

/** A webhook receiver on 127.0.0.1 whose answers the test decides. */
class Receiver {
  readonly received: Received[] = [];
  /** The status for the n-th request (0-based), or "hang" to never answer. */
  respond: (r: Received, n: number) => number | "hang" = () => 200;
  private readonly hung: http.ServerResponse[] = [];
  private constructor(private readonly server: http.Server) {}

  static async start(): Promise<Receiver> {
    let self: Receiver | undefined;
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        const r = { headers: req.headers, body: Buffer.concat(chunks).toString("utf8"), at: performance.now() };
        const n = self!.received.push(r) - 1;
        const status = self!.respond(r, n);
        if (status === "hang") self!.hung.push(res);
        else res.writeHead(status, { "content-type": "text/plain" }).end(status >= 300 ? `nope ${status}` : "ok");
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return (self = new Receiver(server));
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}/hooks`;
  }

  /** Requests about `account`'s events. */
  forAccount(account: string): Received[] {
    return this.received.filter((r) => accountOf(r) === account);
  }

  async close(): Promise<void> {
    for (const res of this.hung) res.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

function accountOf(r: Received): string {
  return (JSON.parse(r.body) as { accountId?: string }).accountId ?? "";
}

/** Standard Webhooks verification, written from the spec (not the service's code). */
function signatureValid(secret: string, r: Received): boolean {
  const id = String(r.headers["webhook-id"]);
  const timestamp = String(r.headers["webhook-timestamp"]);
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = createHmac("sha256", key).update(`${id}.${timestamp}.${r.body}`).digest("base64");
  return String(r.headers["webhook-signature"])
    .split(" ")
    .some((s) => s === `v1,${expected}`);
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const events = () => client(EventService, TOKENS.admin);
const credits = () => client(CreditService, TOKENS.admin);
const grant = (accountId: string, amount = 10n) => credits().grantCredits({ accountId, amount, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() });

/** Every signing secret this file saw, for the leak scan. */
const SECRETS: string[] = [];

async function register(url: string, eventTypes = ["credits.granted"], extra: { description?: string; disabled?: boolean } = {}) {
  const r = await events().createWebhookEndpoint({ url, eventTypes, description: extra.description ?? "test", disabled: extra.disabled ?? false });
  SECRETS.push(r.signingSecret);
  return { endpoint: r.endpoint!, secret: r.signingSecret };
}

async function deleteAllEndpoints(): Promise<void> {
  for (;;) {
    const page = await events().listWebhookEndpoints({ pageSize: 500 });
    if (page.endpoints.length === 0) return;
    for (const e of page.endpoints) await events().deleteWebhookEndpoint({ endpointId: e.id });
  }
}

// -------------------------------------------------------------------- tests

describe("events: outbound webhooks", function () {
  this.timeout(60_000);
  let receiver: Receiver;

  beforeEach(async () => {
    await deleteAllEndpoints();
    receiver = await Receiver.start();
  });
  afterEach(async () => {
    await deleteAllEndpoints();
    await receiver.close();
  });
  after(() => {
    // Secrets appear in CreateWebhookEndpoint responses only.
    const leaks = RECORDED_RESPONSES.filter((r) => SECRETS.some((s) => r.includes(s) && !r.includes(`"signingSecret":"${s}"`)));
    expect(leaks, "responses other than CreateWebhookEndpoint's carrying a signing secret").to.deep.equal([]);
  });

  describe("delivery", () => {
    it("delivers an event three times with the same id and a valid signature when the receiver fails twice", async () => {
      const { endpoint, secret } = await register(receiver.url);
      receiver.respond = (_r, n) => (n < 2 ? [500, 503][n]! : 200);
      const account = newAccount("wh");
      await grant(account, 25n);
      const got = await until("three deliveries", () => (receiver.forAccount(account).length >= 3 ? receiver.forAccount(account) : undefined));
      await sleep(400);
      expect(receiver.forAccount(account), "no fourth send after the success").to.have.length(3);

      const ids = new Set(got.map((r) => r.headers["webhook-id"]));
      expect(ids.size, "one webhook-id across retries").to.equal(1);
      const [id] = [...ids] as string[];
      expect(id).to.match(/^evt_[0-9a-f]{32}$/);
      for (const r of got) {
        expect(signatureValid(secret, r), "signature").to.equal(true);
        expect(r.headers["content-type"]).to.equal("application/json");
        expect(Math.abs(Number(r.headers["webhook-timestamp"]) - Date.now() / 1000), "timestamp is now").to.be.lessThan(30);
        const body = JSON.parse(r.body) as { id: string; type: string; accountId: string; creditsGranted?: { amount: string } };
        expect(body).to.include({ id, type: "credits.granted", accountId: account });
        expect(body.creditsGranted?.amount).to.equal("25");
      }
      // Exponential backoff with jitter: the waits are at least half of 0.2 s and 0.4 s.
      expect(got[1]!.at - got[0]!.at).to.be.greaterThan(90);
      expect(got[2]!.at - got[1]!.at).to.be.greaterThan(190);

      // The body is the event as ListEvents shows it.
      const listed = await events().listEvents({ accountId: account, types: ["credits.granted"] });
      expect(listed.events.map((e) => e.id)).to.deep.equal([id]);

      const log = await until("the delivery recorded", async () => {
        const r = await events().listWebhookDeliveries({ eventId: id });
        return r.deliveries[0]?.state === WebhookDeliveryState.DELIVERED ? r.deliveries : undefined;
      });
      expect(log).to.have.length(1);
      expect(log[0]).to.include({ endpointId: endpoint.id, eventId: id, eventType: "credits.granted", attempts: 3, lastStatus: 200, lastError: "" });
      expect(log[0]!.lastLatencyMs).to.be.at.least(0);
      expect(log[0]!.deliveredAt).to.not.equal(undefined);
      const attempts = await harness().sequelize.query<{ attempt: number; status: number; error: string }>(
        `SELECT attempt, status, error FROM webhook_attempts WHERE delivery_id = $1 ORDER BY id`,
        { bind: [log[0]!.id], type: QueryTypes.SELECT },
      );
      expect(attempts.map((a) => [a.attempt, a.status])).to.deep.equal([
        [1, 500],
        [2, 503],
        [3, 200],
      ]);
      expect(attempts[0]!.error).to.match(/^HTTP 500/);
    });

    it("marks the delivery FAILED and the endpoint FAILING out of retries; redelivery and enabling make it HEALTHY", async () => {
      const { endpoint, secret } = await register(receiver.url);
      receiver.respond = () => 500;
      const account = newAccount("whfail");
      await grant(account);
      const failed = await until("the delivery to fail", async () => {
        const r = await events().listWebhookDeliveries({ endpointId: endpoint.id, states: [WebhookDeliveryState.FAILED] });
        return r.deliveries[0];
      });
      expect(failed).to.include({ attempts: 3, lastStatus: 500 });
      expect(failed.lastError).to.match(/^HTTP 500/);
      expect(failed.nextAttemptAt).to.equal(undefined);
      expect(receiver.forAccount(account)).to.have.length(3);
      const ep = (await events().getWebhookEndpoint({ endpointId: endpoint.id })).endpoint!;
      expect(ep.state).to.equal(WebhookEndpointState.FAILING);

      // The receiver is fixed: an admin redelivers, with the same webhook-id.
      receiver.respond = () => 204;
      const redelivered = await events().redeliverEvent({ eventId: failed.eventId });
      expect(redelivered.deliveries).to.have.length(1);
      expect(redelivered.deliveries[0]).to.include({ eventId: failed.eventId, endpointId: endpoint.id, state: WebhookDeliveryState.PENDING, attempts: 0 });
      const fourth = await until("the redelivery", () => receiver.forAccount(account)[3]);
      expect(fourth.headers["webhook-id"]).to.equal(failed.eventId);
      expect(signatureValid(secret, fourth)).to.equal(true);
      await until("the endpoint HEALTHY after a success", async () => ((await events().getWebhookEndpoint({ endpointId: endpoint.id })).endpoint!.state === WebhookEndpointState.HEALTHY ? true : undefined));
      const all = await events().listWebhookDeliveries({ eventId: failed.eventId });
      expect(all.deliveries.map((d) => d.state), "newest first").to.deep.equal([WebhookDeliveryState.DELIVERED, WebhookDeliveryState.FAILED]);

      // Enabling a FAILING endpoint also makes it HEALTHY.
      await harness().sequelize.query(`UPDATE webhook_endpoints SET state = 'failing' WHERE id = $1`, { bind: [endpoint.id] });
      const enabled = await events().updateWebhookEndpoint({ endpoint: { id: endpoint.id, enabled: true }, updateMask: { paths: ["enabled"] } });
      expect(enabled.endpoint!.state).to.equal(WebhookEndpointState.HEALTHY);
    });

    it("delivers nothing for a rolled-back change, nor while it is uncommitted, nor for a refused call", async () => {
      await register(receiver.url, []);
      const account = newAccount("whrollback");
      const t = await harness().sequelize.transaction();
      try {
        await harness().sequelize.query(`SELECT billing_emit($1, 'credits.granted', '{"amount": 5}'::jsonb)`, { bind: [account], transaction: t });
        const [inside] = await harness().sequelize.query<{ n: string }>(`SELECT count(*) AS n FROM webhook_deliveries WHERE account_id = $1`, { bind: [account], transaction: t, type: QueryTypes.SELECT });
        expect(Number(inside!.n), "the fan-out wrote a delivery inside the transaction").to.equal(1);
        await sleep(600); // several polls while it is uncommitted
        expect(receiver.forAccount(account), "nothing sent before commit").to.have.length(0);
      } finally {
        await t.rollback();
      }
      // A refused deduction writes no event either.
      await expectError(credits().deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 1000n }, idempotencyKey: key() }), Code.FailedPrecondition, "INSUFFICIENT_CREDITS");
      // A committed change on another account shows the worker is running meanwhile.
      const witness = newAccount("whwitness");
      await grant(witness);
      await until("the witness delivery", () => receiver.forAccount(witness)[0]);
      await sleep(300);
      expect(receiver.forAccount(account), "nothing sent for the rolled-back or refused change").to.have.length(0);
      const [after] = await harness().sequelize.query<{ n: string }>(`SELECT count(*) AS n FROM webhook_deliveries WHERE account_id = $1`, { bind: [account], type: QueryTypes.SELECT });
      expect(Number(after!.n)).to.equal(0);
    });

    it("sends only subscribed types, nothing to disabled endpoints, and fails pending deliveries on disable", async () => {
      const subscribed = await register(receiver.url, ["credits.granted"]);
      const other = await register(receiver.url, ["invoice.paid"]);
      const disabled = await register(receiver.url, [], { disabled: true });
      expect(disabled.endpoint.enabled).to.equal(false);
      const account = newAccount("whtypes");
      await grant(account);
      await until("the delivery", () => receiver.forAccount(account)[0]);
      await sleep(300);
      expect(receiver.forAccount(account)).to.have.length(1);
      expect(signatureValid(subscribed.secret, receiver.forAccount(account)[0]!)).to.equal(true);
      expect(signatureValid(other.secret, receiver.forAccount(account)[0]!)).to.equal(false);
      for (const e of [other, disabled]) expect((await events().listWebhookDeliveries({ endpointId: e.endpoint.id })).deliveries).to.have.length(0);

      // RedeliverEvent to one endpoint sends even an unsubscribed type; a disabled one is refused.
      const eventId = String(receiver.forAccount(account)[0]!.headers["webhook-id"]);
      const one = await events().redeliverEvent({ eventId, endpointId: other.endpoint.id });
      expect(one.deliveries.map((d) => d.endpointId)).to.deep.equal([other.endpoint.id]);
      const second = await until("the redelivery", () => receiver.forAccount(account)[1]);
      expect(second.headers["webhook-id"]).to.equal(eventId);
      expect(signatureValid(other.secret, second)).to.equal(true);
      const refused = await expectError(events().redeliverEvent({ eventId, endpointId: disabled.endpoint.id }), Code.InvalidArgument);
      expect(badFields(refused)).to.deep.equal(["endpoint_id"]);

      // Disabling fails what is pending (the receiver hangs, so the first attempt is in flight; the retry never comes).
      const account2 = newAccount("whdisable");
      receiver.respond = (r) => (accountOf(r) === account2 ? "hang" : 200);
      await grant(account2);
      await until("a first failed attempt", () => receiver.forAccount(account2)[0]);
      await events().updateWebhookEndpoint({ endpoint: { id: subscribed.endpoint.id, enabled: false }, updateMask: { paths: ["enabled"] } });
      const log = await until("the delivery failed", async () => {
        const d = (await events().listWebhookDeliveries({ endpointId: subscribed.endpoint.id, states: [WebhookDeliveryState.FAILED] })).deliveries[0];
        return d;
      });
      expect(log.lastError).to.equal("endpoint disabled");
      await sleep(700);
      expect(receiver.forAccount(account2), "no retry to a disabled endpoint").to.have.length(1);
    });

    it("never sends an event twice with three workers claiming from one database", async () => {
      await register(receiver.url);
      const h = harness();
      const secrets = new SecretBox(TEST_SECRET_KEY);
      const evts = new Events(h.sequelize);
      const quiet = { debug: () => undefined, warn: () => undefined };
      const settings = { ...DEFAULT_WEBHOOK_SETTINGS, allowPrivateUrls: true, pollMs: 20, concurrency: 4 };
      const extra = [1, 2].map(() => new WebhookDelivery(h.sequelize, { settings, events: evts, secrets, render: eventJson, log: quiet }));
      extra.forEach((w) => w.start());
      receiver.respond = () => 200;
      const accounts = Array.from({ length: 30 }, () => newAccount("whrace"));
      try {
        await Promise.all(accounts.map((a) => grant(a)));
        await until("every event delivered", () => accounts.every((a) => receiver.forAccount(a).length >= 1) || undefined, 20_000);
        await sleep(500);
      } finally {
        await Promise.all(extra.map((w) => w.stop(2_000)));
      }
      const perId = new Map<string, number>();
      for (const a of accounts) for (const r of receiver.forAccount(a)) perId.set(String(r.headers["webhook-id"]), (perId.get(String(r.headers["webhook-id"])) ?? 0) + 1);
      expect(perId.size).to.equal(30);
      expect([...perId.values()].every((n) => n === 1), "each event sent once").to.equal(true);
    });
  });

  describe("leases", () => {
    it("renews its lease right before the POST, so a send delayed past its lease is not made twice", async function () {
      this.timeout(40_000);
      await register(receiver.url);
      const h = harness();
      const evts = new Events(h.sequelize);
      const read = new Set<string>();
      // The event read stalls past the lease (timeout 300 ms + 5 s), as under pool pressure.
      const stalling = Object.assign(Object.create(evts) as Events, {
        async get(eventId: string, field?: string) {
          // Only the first read of an event stalls.
          if (!read.has(eventId)) {
            read.add(eventId);
            await sleep(6_000);
          }
          return evts.get(eventId, field);
        },
      });
      const quiet = { debug: () => undefined, warn: () => undefined };
      const settings = { ...DEFAULT_WEBHOOK_SETTINGS, allowPrivateUrls: true, pollMs: 5, concurrency: 4, timeoutMs: 300 };
      const slow = new WebhookDelivery(h.sequelize, { settings, events: stalling, secrets: new SecretBox(TEST_SECRET_KEY), render: eventJson, log: quiet });
      slow.start();
      let account = "";
      try {
        // The delivery falls due in 300 ms: the slow worker (5 ms polls) claims it before the server's own (100 ms); if not, try again.
        for (let i = 0; i < 5; i++) {
          account = newAccount("whlease");
          await h.sequelize.transaction(async (t) => {
            await h.sequelize.query(`SELECT billing_emit($1, 'credits.granted', '{"amount": 5}'::jsonb)`, { bind: [account], transaction: t });
            await h.sequelize.query(`UPDATE webhook_deliveries SET next_attempt_at = now() + interval '300 milliseconds' WHERE account_id = $1`, { bind: [account], transaction: t });
          });
          const [event] = await h.sequelize.query<{ id: string }>(`SELECT id::text AS id FROM billing_events WHERE account_id = $1`, { bind: [account], type: QueryTypes.SELECT });
          await sleep(600);
          if (read.has("evt_" + event!.id.replace(/-/g, ""))) break;
        }
        // Once the lease runs out, a worker claims it again and sends it.
        await until("the send after the lease ran out", () => receiver.forAccount(account)[0], 20_000);
        // The stalled worker wakes up after that: it must not send too.
        await sleep(2_000);
      } finally {
        await slow.stop(2_000);
      }
      expect(receiver.forAccount(account), "sent once").to.have.length(1);
    });
  });

  describe("endpoints API", () => {
    it("creates, reads, lists, updates and deletes endpoints; the secret is shown once and stored encrypted", async () => {
      const created = await events().createWebhookEndpoint({ url: receiver.url, description: "ledger sync", eventTypes: ["payment.succeeded", "credits.granted", "credits.granted"] });
      SECRETS.push(created.signingSecret);
      expect(created.signingSecret).to.match(/^whsec_[A-Za-z0-9+/]{32}$/);
      const e = created.endpoint!;
      expect(e).to.include({ url: receiver.url, description: "ledger sync", enabled: true, state: WebhookEndpointState.HEALTHY, createdBy: "admin" });
      expect(e.eventTypes, "sorted and unique").to.deep.equal(["credits.granted", "payment.succeeded"]);
      const [stored] = await harness().sequelize.query<{ secret_encrypted: string }>(`SELECT secret_encrypted FROM webhook_endpoints WHERE id = $1`, { bind: [e.id], type: QueryTypes.SELECT });
      expect(stored!.secret_encrypted).to.match(/^v1:/);
      expect(stored!.secret_encrypted).to.not.include(created.signingSecret.slice(6));

      const got = await events().getWebhookEndpoint({ endpointId: e.id });
      expect(got.endpoint!.id).to.equal(e.id);
      expect(JSON.stringify(got.endpoint, (_k, v: unknown) => (typeof v === "bigint" ? String(v) : v))).to.not.include(created.signingSecret);

      const second = await register("http://127.0.0.1:9/second");
      const page1 = await events().listWebhookEndpoints({ pageSize: 1 });
      expect(page1.endpoints.map((x) => x.id)).to.deep.equal([e.id]);
      const page2 = await events().listWebhookEndpoints({ pageSize: 1, pageToken: page1.nextPageToken });
      expect(page2.endpoints.map((x) => x.id)).to.deep.equal([second.endpoint.id]);
      expect(page2.nextPageToken).to.equal("");

      const updated = await events().updateWebhookEndpoint({
        endpoint: { id: e.id, url: "http://127.0.0.1:9/moved", description: "moved", eventTypes: [], enabled: false },
        updateMask: { paths: ["url", "description", "event_types", "enabled"] },
      });
      expect(updated.endpoint).to.include({ url: "http://127.0.0.1:9/moved", description: "moved", enabled: false });
      expect(updated.endpoint!.eventTypes).to.deep.equal([]);
      const partly = await events().updateWebhookEndpoint({ endpoint: { id: e.id, description: "only this", url: "http://ignored.example/" }, updateMask: { paths: ["description"] } });
      expect(partly.endpoint).to.include({ url: "http://127.0.0.1:9/moved", description: "only this" });

      await events().deleteWebhookEndpoint({ endpointId: e.id });
      await expectError(events().getWebhookEndpoint({ endpointId: e.id }), Code.NotFound, "NOT_FOUND");
      await expectError(events().deleteWebhookEndpoint({ endpointId: e.id }), Code.NotFound, "NOT_FOUND");
    });

    it("answers INVALID_ARGUMENT naming the field for bad input", async () => {
      const bad = async (call: Promise<unknown>, fields: string[]) => expect(badFields(await expectError(call, Code.InvalidArgument, "INVALID_ARGUMENT"))).to.deep.equal(fields);
      await bad(events().createWebhookEndpoint({ url: "" }), ["url"]);
      await bad(events().createWebhookEndpoint({ url: "ftp://example.com/x" }), ["url"]);
      await bad(events().createWebhookEndpoint({ url: "not a url" }), ["url"]);
      await bad(events().createWebhookEndpoint({ url: "https://user:pw@example.com/" }), ["url"]);
      await bad(events().createWebhookEndpoint({ url: "https://example.com/" + "x".repeat(2100) }), ["url"]);
      await bad(events().createWebhookEndpoint({ url: "https://example.com/", eventTypes: ["credits.granted", "nope"] }), ["event_types[1]"]);
      await bad(events().createWebhookEndpoint({ url: "https://example.com/", description: "x".repeat(256) }), ["description"]);
      await bad(events().createWebhookEndpoint({ url: "gopher://x", description: "\u0000", eventTypes: ["?"] }), ["url", "description", "event_types[0]"]);
      await bad(events().getWebhookEndpoint({ endpointId: "nope" }), ["endpoint_id"]);
      await bad(events().deleteWebhookEndpoint({ endpointId: "" }), ["endpoint_id"]);
      await bad(events().listWebhookEndpoints({ pageSize: -1 }), ["page_size"]);
      await bad(events().listWebhookEndpoints({ pageToken: "forged" }), ["page_token"]);
      await bad(events().listWebhookDeliveries({ eventId: "evt_123" }), ["event_id"]);
      await bad(events().listWebhookDeliveries({ endpointId: "x" }), ["endpoint_id"]);
      await bad(events().listWebhookDeliveries({ states: [99 as WebhookDeliveryState] }), ["states[0]"]);
      await bad(events().redeliverEvent({ eventId: "" }), ["event_id"]);
      const { endpoint } = await register(receiver.url);
      await bad(events().updateWebhookEndpoint({ endpoint: { id: endpoint.id, url: "https://example.com/" }, updateMask: { paths: ["secret"] } }), ["update_mask"]);
      await bad(events().updateWebhookEndpoint({ endpoint: { id: endpoint.id }, updateMask: { paths: [] } }), ["update_mask"]);
      await bad(events().updateWebhookEndpoint({ endpoint: { id: endpoint.id, url: "file:///etc/passwd" }, updateMask: { paths: ["url"] } }), ["endpoint.url"]);
      await bad(events().updateWebhookEndpoint({ endpoint: { id: endpoint.id, eventTypes: ["x"] }, updateMask: { paths: ["event_types"] } }), ["endpoint.event_types[0]"]);
      await bad(events().updateWebhookEndpoint({ updateMask: { paths: ["enabled"] } }), ["endpoint.id"]);
      await expectError(events().updateWebhookEndpoint({ endpoint: { id: randomUUID(), enabled: true }, updateMask: { paths: ["enabled"] } }), Code.NotFound);
      await expectError(events().redeliverEvent({ eventId: "evt_" + "0".repeat(32) }), Code.NotFound);
    });

    it("is admin only", async () => {
      for (const token of [TOKENS.service, TOKENS.accountA]) {
        const c = client(EventService, token);
        await expectError(c.createWebhookEndpoint({ url: receiver.url }), Code.PermissionDenied);
        await expectError(c.listWebhookEndpoints({}), Code.PermissionDenied);
        await expectError(c.listWebhookDeliveries({}), Code.PermissionDenied);
        await expectError(c.redeliverEvent({ eventId: "evt_" + "0".repeat(32) }), Code.PermissionDenied);
      }
      await expectError(client(EventService, undefined).getWebhookEndpoint({ endpointId: randomUUID() }), Code.Unauthenticated);
    });

    it("never answers INTERNAL to hostile input", async () => {
      const strings = ["", "x".repeat(5000), "\u0000", "\ud800", "' OR 1=1 --", "evt_" + "f".repeat(32), randomUUID(), "http://[::1]/", "javascript:alert(1)", "http://%zz/", "https://exa mple.com/", "http://0x7f.1/"];
      for (const s of strings) {
        // (Mask paths stay JSON-encodable: the client refuses to send irreversible ones.)
        const calls: (() => Promise<unknown>)[] = [
          () => events().createWebhookEndpoint({ url: s, description: s, eventTypes: [s] }),
          () => events().getWebhookEndpoint({ endpointId: s }),
          () => events().updateWebhookEndpoint({ endpoint: { id: s, url: s, description: s, eventTypes: [s] }, updateMask: { paths: ["url", "event_types", "description"] } }),
          () => events().updateWebhookEndpoint({ endpoint: { id: randomUUID(), url: s, description: s, eventTypes: [s] }, updateMask: { paths: ["url", "bogus"] } }),
          () => events().deleteWebhookEndpoint({ endpointId: s }),
          () => events().listWebhookEndpoints({ pageToken: s, pageSize: 2147483647 }),
          () => events().listWebhookDeliveries({ endpointId: s, eventId: s, pageToken: s }),
          () => events().redeliverEvent({ eventId: s, endpointId: s }),
        ];
        for (const call of calls) {
          try {
            await call();
          } catch (err) {
            const code = (err as { code?: Code }).code;
            expect([Code.InvalidArgument, Code.NotFound], `${String(err)} for ${JSON.stringify(s).slice(0, 40)}`).to.include(code);
          }
        }
      }
    });
  });

  describe("SSRF", () => {
    it("classifies loopback, private, link-local, unique-local, metadata and mapped addresses as private", () => {
      for (const a of ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "[::1]", "not-an-ip",
        // RFC 8215 local-use NAT64, SIIT (IPv4-translated) and Teredo reach IPv4 hosts in ways the check cannot follow.
        "64:ff9b:1::a9fe:a9fe", "64:ff9b:1::808:808", "64:ff9b:1:ffff::1", "::ffff:0:7f00:1", "::ffff:0:127.0.0.1", "::ffff:0:a9fe:a9fe", "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "[2001::5efe:a9fe:a9fe]"]) {
        expect(isPrivateAddress(a), a).to.equal(true);
      }
      for (const a of ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2001:4860:4860::8888", "64:ff9b::808:808", "2001:1::1"]) expect(isPrivateAddress(a), a).to.equal(false);
    });

    it("refuses private targets at registration unless allowed, naming url", async () => {
      const h = harness();
      const strict = new WebhookEndpoints(h.sequelize, new SecretBox(TEST_SECRET_KEY), new Events(h.sequelize), false);
      for (const url of ["http://127.0.0.1:8080/x", "http://localhost/x", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.5/", "http://0x7f.1/", "http://2130706433/", "http://metadata.google.internal/"]) {
        let error: unknown;
        try {
          await strict.create({ url, description: "", eventTypes: [], disabled: false }, "test");
        } catch (err) {
          error = err;
        }
        expect(error, url).to.be.instanceOf(BillingError);
        expect((error as BillingError).kind, url).to.equal("invalid_argument");
        expect((error as BillingError).fieldViolations.map((v) => v.field), url).to.deep.equal(["url"]);
      }
      // A public address is accepted (nothing is sent: the endpoint is created disabled).
      const ok = await strict.create({ url: "https://93.184.216.34/hooks", description: "", eventTypes: [], disabled: true }, "test");
      SECRETS.push(ok.signingSecret);
      expect(ok.endpoint.url).to.equal("https://93.184.216.34/hooks");
    });

    it("refuses private targets at send time, on the address actually resolved", async () => {
      const port = new URL(receiver.url).port;
      for (const url of [`http://127.0.0.1:${port}/hooks`, `http://localhost:${port}/hooks`, `http://[::ffff:127.0.0.1]:${port}/hooks`]) {
        const r = await sendWebhook(url, "{}", {}, { timeoutMs: 2_000, allowPrivate: false });
        expect(r.status, url).to.equal(0);
        expect(r.error, url).to.match(/refused to connect/);
      }
      expect(receiver.received, "nothing reached the receiver").to.have.length(0);
      const allowed = await sendWebhook(`http://localhost:${port}/hooks`, "{}", {}, { timeoutMs: 2_000, allowPrivate: true });
      expect(allowed.status).to.equal(200);
    });

    it("times out a receiver that never answers", async () => {
      receiver.respond = () => "hang";
      const r = await sendWebhook(receiver.url, "{}", {}, { timeoutMs: 300, allowPrivate: true });
      expect(r).to.include({ status: 0 });
      expect(r.error).to.match(/^timeout/);
      expect(r.latencyMs).to.be.within(250, 2_000);
    });
  });

  describe("a real service process", () => {
    const TOKEN = "tok_webhook_kill";
    let dbUrl = "";
    let dropDb: (() => Promise<void>) | undefined;
    let svc: ServiceProcess | undefined;

    before(async function () {
      this.timeout(60_000);
      // A database of its own, so the harness's worker does not deliver for the process under test.
      const name = `billing_webhook_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
      const admin = new pg.Client({ connectionString: harness().databaseUrl });
      await admin.connect();
      await admin.query(`CREATE DATABASE ${name}`);
      await admin.end();
      const url = new URL(harness().databaseUrl);
      url.pathname = `/${name}`;
      dbUrl = url.toString();
      dropDb = async () => {
        const c = new pg.Client({ connectionString: harness().databaseUrl });
        await c.connect();
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        await c.end();
      };
    });
    afterEach(() => svc?.kill());
    after(async () => {
      svc?.kill();
      await svc?.exited;
      await dropDb?.();
    });

    async function start(env: Record<string, string> = {}) {
      svc = spawnService({
        DATABASE_URL: dbUrl,
        PORT: String(await freePort()),
        BILLING_API_KEYS: `admin=${TOKEN}`,
        BILLING_SECRET_KEY: TEST_SECRET_KEY,
        LOG_LEVEL: "info",
        METRICS_PORT: "",
        WEBHOOK_POLL_MS: "100",
        WEBHOOK_TIMEOUT_MS: "1000",
        WEBHOOK_RETRY_BASE_MS: "200",
        ...env,
      });
      const listening = await svc.waitForLine((l) => l.msg === "billing listening", 40_000);
      const transport = createConnectTransport({ baseUrl: `http://127.0.0.1:${String(listening.port)}`, httpVersion: "1.1" });
      const headers = { authorization: `Bearer ${TOKEN}` };
      const c = { events: createClient(EventService, transport), credits: createClient(CreditService, transport) };
      return { ...c, headers, process: svc };
    }

    it("refuses a loopback URL by default (WEBHOOK_ALLOW_PRIVATE_URLS unset)", async () => {
      const s = await start();
      const err = await expectError(s.events.createWebhookEndpoint({ url: receiver.url }, { headers: s.headers }), Code.InvalidArgument, "INVALID_ARGUMENT");
      expect(badFields(err)).to.deep.equal(["url"]);
      expect(err.rawMessage).to.match(/WEBHOOK_ALLOW_PRIVATE_URLS/);
    });

    it("still delivers after a kill -9 between commit and delivery (before the first send, and mid-send)", async function () {
      this.timeout(90_000);
      // 1. A service whose worker does not poll within the test: the change commits, then the process dies.
      let s = await start({ WEBHOOK_ALLOW_PRIVATE_URLS: "on", WEBHOOK_POLL_MS: "600000" });
      const { secret } = await (async () => {
        const r = await s.events.createWebhookEndpoint({ url: receiver.url, eventTypes: ["credits.granted"] }, { headers: s.headers });
        SECRETS.push(r.signingSecret);
        return { secret: r.signingSecret };
      })();
      const before = newAccount("whkill");
      await s.credits.grantCredits({ accountId: before, amount: 7n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() }, { headers: s.headers });
      s.process.child.kill("SIGKILL");
      await s.process.exited;
      expect(receiver.forAccount(before)).to.have.length(0);

      // 2. Restarted: the committed delivery goes out. The receiver hangs on the next account's
      //    first request, and the process is killed while that send is in flight.
      let hangFor = "";
      receiver.respond = (r) => (accountOf(r) === hangFor && receiver.forAccount(hangFor).length === 1 ? "hang" : 200);
      s = await start({ WEBHOOK_ALLOW_PRIVATE_URLS: "on" });
      const first = await until("the delivery after restart", () => receiver.forAccount(before)[0]);
      expect(signatureValid(secret, first)).to.equal(true);
      const during = (hangFor = newAccount("whkill2"));
      await s.credits.grantCredits({ accountId: during, amount: 9n, type: CreditTransactionType.ADJUSTMENT, idempotencyKey: key() }, { headers: s.headers });
      await until("the send in flight", () => receiver.forAccount(during)[0]);
      s.process.child.kill("SIGKILL");
      await s.process.exited;

      // 3. Restarted again: once the dead process's lease (timeout + 5 s) expires, the event is sent again, same id.
      s = await start({ WEBHOOK_ALLOW_PRIVATE_URLS: "on" });
      const again = await until("the redelivery after the lease expired", () => receiver.forAccount(during)[1], 20_000);
      const firstTry = receiver.forAccount(during)[0]!;
      expect(again.headers["webhook-id"]).to.equal(firstTry.headers["webhook-id"]);
      expect(signatureValid(secret, again)).to.equal(true);
      const log = await until("the delivery recorded", async () => {
        const r = await s.events.listWebhookDeliveries({ eventId: String(again.headers["webhook-id"]) }, { headers: s.headers });
        return r.deliveries[0]?.state === WebhookDeliveryState.DELIVERED ? r.deliveries[0] : undefined;
      });
      expect(log.attempts, "the interrupted attempt counts").to.equal(2);
      expect(receiver.forAccount(before), "the first event was not sent again").to.have.length(1);
    });
  });
});
