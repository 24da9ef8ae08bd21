/**
 * Plain HTTP probes: GET /healthz (the process is up) and GET /readyz (the
 * database answers, the schema is current, the server is not draining).
 * Draining is observed on a real app while close() waits for an in-flight
 * call held by a row lock; an outdated schema on a separate embedded
 * PostgreSQL migrated only to 0004.
 */
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import net from "node:net";
import { QueryTypes, type Transaction } from "sequelize";
import { CreditService, CreditTransactionType } from "../../gen/billing/v1/credit_service_pb.js";
import { createApp } from "../../src/app.js";
import { pendingMigrations } from "../../src/db/migrate.js";
import { createLogger } from "../../src/logger.js";
import type { BillingServer } from "../../src/server.js";
import { TOKENS, harness, key, newAccount } from "../harness.js";
import { sleep, startOutdatedDatabase, type OutdatedDatabase } from "./util.js";

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** Reads one HTTP/1.1 response (content-length bodies) from `socket`, or rejects after `timeoutMs` / on close. */
function readResponse(socket: net.Socket, timeoutMs: number): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => finish(new Error(`no complete response within ${timeoutMs} ms (got ${JSON.stringify(buf.toString("latin1"))})`)), timeoutMs);
    const finish = (err?: Error, answer?: RawAnswer) => {
      clearTimeout(timer);
      socket.off("data", onData);
      socket.off("close", onClose);
      if (err) reject(err);
      else resolve(answer!);
    };
    const onClose = () => finish(new Error(`the server closed the connection before a complete response (got ${JSON.stringify(buf.toString("latin1"))})`));
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const [statusLine, ...headerLines] = buf.subarray(0, end).toString("latin1").split("\r\n");
      const headers: Record<string, string> = {};
      for (const h of headerLines) {
        const i = h.indexOf(":");
        headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim();
      }
      const status = Number(statusLine!.split(" ")[1]);
      const rest = buf.subarray(end + 4);
      if (headers["transfer-encoding"] === "chunked") {
        const chunks: Buffer[] = [];
        for (let at = 0; ; ) {
          const eol = rest.indexOf("\r\n", at);
          if (eol < 0) return;
          const size = parseInt(rest.subarray(at, eol).toString("latin1"), 16);
          if (rest.length < eol + 2 + size + 2) return;
          if (size === 0) return finish(undefined, { status, headers, body: Buffer.concat(chunks).toString("utf8") });
          chunks.push(rest.subarray(eol + 2, eol + 2 + size));
          at = eol + 2 + size + 2;
        }
      }
      const length = Number(headers["content-length"] ?? "0");
      if (rest.length < length) return;
      finish(undefined, { status, headers, body: rest.subarray(0, length).toString("utf8") });
    };
    socket.on("data", onData);
    socket.once("close", onClose);
  });
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, "127.0.0.1", () => resolve(s));
    s.once("error", reject);
  });
}

async function get(baseUrl: string, path: string, method = "GET") {
  const res = await fetch(`${baseUrl}${path}`, { method });
  const text = await res.text();
  return { status: res.status, contentType: res.headers.get("content-type"), allow: res.headers.get("allow"), cacheControl: res.headers.get("cache-control"), text };
}

describe("operations: HTTP probes /healthz and /readyz", function () {
  this.timeout(30_000);

  describe("on a healthy server", () => {
    it("GET /healthz answers 200 {\"status\":\"ok\"} as JSON, not cached", async () => {
      const r = await get(harness().baseUrl, "/healthz");
      expect(r.status).to.equal(200);
      expect(r.contentType).to.match(/^application\/json/);
      expect(r.cacheControl).to.equal("no-store");
      expect(JSON.parse(r.text)).to.deep.equal({ status: "ok" });
    });

    it("GET /readyz answers 200 {\"status\":\"ready\"} when the database answers and the schema is current", async () => {
      const r = await get(harness().baseUrl, "/readyz");
      expect(r.status, r.text).to.equal(200);
      expect(r.contentType).to.match(/^application\/json/);
      expect(r.cacheControl).to.equal("no-store");
      expect(JSON.parse(r.text)).to.deep.equal({ status: "ready" });
    });

    it("POST /healthz and POST /readyz are 405 with Allow: GET", async () => {
      for (const path of ["/healthz", "/readyz"]) {
        const r = await get(harness().baseUrl, path, "POST");
        expect(r.status, `POST ${path}`).to.equal(405);
        expect(r.allow, `Allow on POST ${path}`).to.equal("GET");
      }
    });
  });

  describe("while the server drains", () => {
    let app: BillingServer | undefined;
    let closing: Promise<void> | undefined;
    let lock: Transaction | undefined;

    after(async () => {
      await lock?.rollback().catch(() => undefined);
      await closing?.catch(() => undefined);
      if (!closing) await app?.close(1_000);
    });

    it("GET /readyz answers 503 with reason \"draining\" (and Connection: close) while close() waits for an in-flight call, which is still answered", async () => {
      const { config, sequelize } = harness();
      app = createApp(config, sequelize, createLogger("silent"));
      const port = await app.listen(0, "127.0.0.1");
      const baseUrl = `http://127.0.0.1:${port}`;
      const credit = createClient(CreditService, createConnectTransport({ baseUrl, httpVersion: "1.1" }));
      const headers = { authorization: `Bearer ${TOKENS.service}` };
      const account = newAccount("drain");
      await credit.grantCredits({ accountId: account, amount: 10n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() }, { headers });

      // A probe connection, kept alive: ready before the drain.
      const probe = await connect(port);
      probe.on("error", () => {});
      probe.write("GET /readyz HTTP/1.1\r\nHost: lb\r\nConnection: keep-alive\r\n\r\n");
      const first = await readResponse(probe, 5_000);
      expect(first.status, first.body).to.equal(200);
      expect(JSON.parse(first.body)).to.deep.equal({ status: "ready" });

      // Hold the account's row so a grant on it blocks in the database.
      lock = await sequelize.transaction();
      await sequelize.query(`SELECT 1 FROM billing_accounts WHERE account_id = $1 FOR UPDATE`, { bind: [account], transaction: lock, type: QueryTypes.SELECT });
      const slow = credit.grantCredits({ accountId: account, amount: 5n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() }, { headers, timeoutMs: 20_000 });
      slow.catch(() => undefined);
      for (let i = 0; ; i++) {
        const [row] = await sequelize.query<{ n: string }>(
          `SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
          { type: QueryTypes.SELECT },
        );
        if (Number(row!.n) > 0) break;
        if (i > 100) throw new Error("the grant never blocked on the row lock");
        await sleep(20);
      }

      // The load balancer's next probe has started arriving (request line sent, headers not finished) when the drain starts.
      probe.write("GET /readyz HTTP/1.1\r\nHost: lb\r\n");
      await sleep(50);
      const closeStarted = performance.now();
      closing = app.close(5_000);
      await sleep(150);
      probe.write("\r\n");
      const during = await readResponse(probe, 5_000);
      expect(during.status, during.body).to.equal(503);
      expect(during.headers["content-type"]).to.match(/^application\/json/);
      const body = JSON.parse(during.body) as { status: string; reasons: string[] };
      expect(body.status).to.equal("not_ready");
      expect(body.reasons).to.include("draining");
      expect(during.headers.connection, "HTTP/1.1 answers while draining close the connection").to.equal("close");

      // The drain is still waiting for the blocked grant; release it: it is answered, and close() ends.
      let closed = false;
      void closing.then(() => (closed = true));
      await sleep(100);
      expect(closed, "close() waits for the in-flight call").to.equal(false);
      await lock.rollback();
      lock = undefined;
      const granted = await slow;
      expect(granted.balance?.balance).to.equal(15n);
      await closing;
      expect(performance.now() - closeStarted, "close() ends soon after the last call").to.be.below(4_000);
      probe.destroy();
    });
  });

  describe("over a database whose schema is behind this build (migrated to 0004)", function () {
    this.timeout(60_000);
    let outdated: OutdatedDatabase | undefined;
    let app: BillingServer | undefined;
    let baseUrl = "";

    before(async () => {
      outdated = await startOutdatedDatabase("0004-currency-amounts");
      app = createApp(harness().config, outdated.sequelize, createLogger("silent"));
      baseUrl = `http://127.0.0.1:${await app.listen(0, "127.0.0.1")}`;
    });

    after(async () => {
      await app?.close(1_000);
      await outdated?.stop();
    });

    it("GET /readyz answers 503 naming the pending migration as schema_outdated, while /healthz stays 200", async () => {
      const r = await get(baseUrl, "/readyz");
      expect(r.status, r.text).to.equal(503);
      const body = JSON.parse(r.text) as { status: string; reasons: string[] };
      expect(body.status).to.equal("not_ready");
      const reason = body.reasons.find((x) => x.startsWith("schema_outdated"));
      expect(reason, JSON.stringify(body.reasons)).to.be.a("string");
      const pending = await pendingMigrations(outdated!.sequelize);
      expect(pending[0]).to.equal("0005-payment-providers");
      for (const name of pending) expect(reason).to.include(name);
      expect(reason).to.not.include("0004-currency-amounts");
      expect(body.reasons).to.not.include("draining");
      expect(body.reasons).to.not.include("database_unreachable");
      const h = await get(baseUrl, "/healthz");
      expect(h.status).to.equal(200);
      expect(JSON.parse(h.text)).to.deep.equal({ status: "ok" });
    });

    it("GET /readyz answers 503 database_unreachable once that database is down, while /healthz stays 200", async () => {
      await outdated!.db.stop();
      const r = await get(baseUrl, "/readyz");
      expect(r.status, r.text).to.equal(503);
      expect((JSON.parse(r.text) as { reasons: string[] }).reasons).to.include("database_unreachable");
      expect((await get(baseUrl, "/healthz")).status).to.equal(200);
    });
  });
});
