/**
 * A database outage is UNAVAILABLE, health says NOT_SERVING, and the server
 * stays up and recovers when the database comes back.
 */
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport, createConnectTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import os from "node:os";
import path from "node:path";
import { CreditService, CreditTransactionType } from "../gen/billing/v1/credit_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { createApp } from "../src/app.js";
import { createSequelize } from "../src/db/database.js";
import { createLogger } from "../src/logger.js";
import { ACCOUNT_A, TOKENS, expectError, harness, key, newAccount } from "./harness.js";

async function startServer(url: string, applicationName: string) {
  const sequelize = createSequelize({ url, applicationName, poolMax: 5 });
  const server = createApp(harness().config, sequelize, createLogger("silent"));
  const port = await server.listen(0, "127.0.0.1");
  const baseUrl = `http://127.0.0.1:${port}`;
  const headers = { authorization: `Bearer ${TOKENS.service}` };
  return {
    sequelize,
    credit: createClient(CreditService, createConnectTransport({ baseUrl, httpVersion: "1.1" })),
    creditGrpc: createClient(CreditService, createGrpcTransport({ baseUrl })),
    health: createClient(Health, createGrpcTransport({ baseUrl })),
    headers,
    async stop() {
      await server.close(1_000);
      await sequelize.close().catch(() => undefined);
    },
  };
}

describe("database outage", function () {
  this.timeout(30_000);

  it("answers UNAVAILABLE and NOT_SERVING while the database is unreachable, and stays up", async () => {
    const nowhere = `postgres://postgres@localhost/none?host=${encodeURIComponent(path.join(os.tmpdir(), "billing-no-such-socket"))}`;
    const s = await startServer(nowhere, "billing-outage-test");
    try {
      const err = await expectError(s.credit.getBalance({ accountId: ACCOUNT_A }, { headers: s.headers }), Code.Unavailable, "DATABASE_UNAVAILABLE");
      expect(err.rawMessage).not.to.match(/ENOENT|socket|\.s\.PGSQL|sequelize/i);
      await expectError(
        s.creditGrpc.grantCredits({ accountId: ACCOUNT_A, amount: 1n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() }, { headers: s.headers }),
        Code.Unavailable,
      );
      expect((await s.health.check({ service: "" })).status).to.equal(HealthCheckResponse_ServingStatus.NOT_SERVING);
      // Still serving after repeated failures.
      await expectError(s.credit.getBalance({ accountId: ACCOUNT_A }, { headers: s.headers }), Code.Unavailable);
    } finally {
      await s.stop();
    }
  });

  it("recovers when its connections are killed under it", async () => {
    const s = await startServer(harness().databaseUrl, "billing-kill-test");
    try {
      const account = newAccount();
      await s.credit.grantCredits({ accountId: account, amount: 5n, type: CreditTransactionType.PURCHASE, idempotencyKey: key() }, { headers: s.headers });
      await harness().sequelize.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'billing-kill-test'`);
      await new Promise((r) => setTimeout(r, 200));
      // The first call may see the dead connection (UNAVAILABLE, never INTERNAL); later calls succeed.
      let balance: bigint | undefined;
      for (let i = 0; i < 5 && balance === undefined; i++) {
        try {
          balance = (await s.credit.getBalance({ accountId: account }, { headers: s.headers })).balance?.balance;
        } catch (e) {
          expect((e as { code: Code }).code).to.equal(Code.Unavailable);
        }
      }
      expect(balance).to.equal(5n);
      expect((await s.health.check({ service: "" })).status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
    } finally {
      await s.stop();
    }
  });
});
