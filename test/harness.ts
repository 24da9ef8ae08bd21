/**
 * The shared integration harness: one real server on a free port over a
 * real PostgreSQL (a throwaway embedded cluster, or a fresh database on the
 * server named by DATABASE_URL), and clients for every protocol.
 */
import { fromBinary, toJsonString, type DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import path from "node:path";
import pg from "pg";
import type { Sequelize } from "sequelize";
import { BadRequestSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { createApp } from "../src/app.js";
import { ApiKeyRing } from "../src/auth/api-keys.js";
import type { Config } from "../src/config.js";
import { PROJECT_ROOT } from "../src/db/connect.js";
import { createSequelize } from "../src/db/database.js";
import { EmbeddedPostgres, temporaryDataDir } from "../src/db/embedded.js";
import { migrate } from "../src/db/migrate.js";
import { createLogger } from "../src/logger.js";
import type { BillingServer } from "../src/server.js";

/** Tokens of the test keys, by who they are. */
export const TOKENS = {
  admin: "tok_admin",
  opsAdmin: "tok_ops",
  service: "tok_service",
  accountA: "tok_acct_a",
  accountB: "tok_acct_b",
  hashed: "tok_hashed_service",
} as const;

export const ACCOUNT_A = "acct_a";
export const ACCOUNT_B = "acct_b";
export const CORS_ORIGIN = "https://dashboard.example";
export const TEST_SECRET_KEY = "test-billing-secret-key";

export interface Harness {
  port: number;
  baseUrl: string;
  sequelize: Sequelize;
  config: Config;
  databaseUrl: string;
  server: BillingServer;
  stop(): Promise<void>;
}

let current: Harness | undefined;
export function harness(): Harness {
  if (!current) throw new Error("the test harness is not started (test/setup.ts)");
  return current;
}

/** Starts the database and the server; called once by the root hook. */
export async function startHarness(): Promise<Harness> {
  const { createHash } = await import("node:crypto");
  const hashedKey = "sha256:" + createHash("sha256").update(TOKENS.hashed).digest("hex");
  let embedded: EmbeddedPostgres | undefined;
  let databaseUrl: string;
  let dropDatabase: (() => Promise<void>) | undefined;
  if (process.env.DATABASE_URL) {
    // A fresh database on the given server, dropped afterwards.
    const name = `billing_test_${randomUUID().replace(/-/g, "").slice(0, 12)}`;
    const admin = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${name}`);
    await admin.end();
    const url = new URL(process.env.DATABASE_URL);
    url.pathname = `/${name}`;
    databaseUrl = url.toString();
    dropDatabase = async () => {
      const c = new pg.Client({ connectionString: process.env.DATABASE_URL });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    };
  } else {
    embedded = await EmbeddedPostgres.start({ dataDir: temporaryDataDir("billing-test-"), ephemeral: true });
    databaseUrl = embedded.url();
  }
  const sequelize = createSequelize({ url: databaseUrl, poolMax: 30 });
  await migrate(sequelize);
  const config: Config = {
    port: 0,
    host: "127.0.0.1",
    apiKeys: ApiKeyRing.parse(
      [
        `admin=${TOKENS.admin}`,
        `ops-ana@admin=${TOKENS.opsAdmin}`,
        `service=${TOKENS.service}`,
        `billing-worker@service=${hashedKey}`,
        `account:${ACCOUNT_A}=${TOKENS.accountA}`,
        `account:${ACCOUNT_B}=${TOKENS.accountB}`,
      ].join(","),
    ),
    corsOrigins: [CORS_ORIGIN],
    secretKey: TEST_SECRET_KEY,
    logLevel: "silent",
    // Webhook receivers in the tests listen on 127.0.0.1; retries come quickly.
    webhooks: { allowPrivateUrls: true, pollMs: 100, retryBaseMs: 200, retryMaxDelayMs: 2_000, maxAttempts: 3, timeoutMs: 3_000 },
    // Sweeps (lot and reservation expiry, expiry warnings) every half second, warning an hour ahead.
    sweepIntervalMs: 500,
    lotExpiryWarningMs: 3_600_000,
  };
  const logger = createLogger(process.env.TEST_LOG_LEVEL === "debug" ? "debug" : "silent");
  const server = createApp(config, sequelize, logger);
  const port = await server.listen(0, "127.0.0.1");
  current = {
    port,
    baseUrl: `http://127.0.0.1:${port}`,
    sequelize,
    config,
    databaseUrl,
    server,
    async stop() {
      await server.close(2_000);
      await sequelize.close();
      await dropDatabase?.();
      await embedded?.stop();
    },
  };
  return current;
}

export type Protocol = "connect-json-http1" | "grpc-http2" | "grpc-web-http1" | "connect-binary-http2";

/** Every response message any test client received, as JSON (for the secrets scan). */
export const RECORDED_RESPONSES: string[] = [];

/** Secrets the tests store; no response may ever contain one. */
export const KNOWN_SECRETS = new Set<string>();

const recordResponses: Interceptor = (next) => async (req) => {
  const res = await next(req);
  if (!res.stream) {
    RECORDED_RESPONSES.push(toJsonString(res.method.output, res.message as never));
    return res;
  }
  const source = res.message;
  async function* recorded() {
    for await (const m of source) {
      RECORDED_RESPONSES.push(toJsonString(res.method.output, m as never));
      yield m;
    }
  }
  return { ...res, message: recorded() } as typeof res;
};

/** A transport for one protocol against the harness server. */
export function transport(protocol: Protocol): Transport {
  const baseUrl = harness().baseUrl;
  const interceptors = [recordResponses];
  switch (protocol) {
    case "connect-json-http1":
      return createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false, interceptors });
    case "connect-binary-http2":
      return createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, interceptors });
    case "grpc-http2":
      return createGrpcTransport({ baseUrl, interceptors });
    case "grpc-web-http1":
      return createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors });
  }
}

/** The recorded responses that contain a known secret (should be none). */
export function responsesLeakingSecrets(): string[] {
  return RECORDED_RESPONSES.filter((r) => [...KNOWN_SECRETS].some((s) => r.includes(s)));
}

const transports = new Map<Protocol, Transport>();

/** A generated Connect client for `service`, sending `token` (if any). */
export function client<T extends DescService>(service: T, token: string | undefined, protocol: Protocol = "connect-json-http1"): Client<T> {
  let t = transports.get(protocol);
  if (!t) transports.set(protocol, (t = transport(protocol)));
  const base = createClient(service, t);
  if (token === undefined) return base;
  // Add the bearer header to every call.
  return new Proxy(base, {
    get(target, prop) {
      const fn = (target as Record<string | symbol, unknown>)[prop];
      if (typeof fn !== "function") return fn;
      return (req: unknown, options: { headers?: Record<string, string> } = {}) =>
        (fn as (r: unknown, o: unknown) => unknown)(req, { ...options, headers: { authorization: `Bearer ${token}`, ...(options.headers ?? {}) } });
    },
  }) as Client<T>;
}

/** Every Connect protocol, for tests that must hold on each. */
export const PROTOCOLS: Protocol[] = ["connect-json-http1", "grpc-http2", "grpc-web-http1", "connect-binary-http2"];

/** A plain @grpc/grpc-js client built from proto/ at run time (as a non-Connect caller would). */
export function grpcJsClient(serviceName: "CreditService" | "InvoiceService" | "PaymentService" | "ModelConfigService"): grpc.Client & Record<string, Function> {
  const file = { CreditService: "credit_service", InvoiceService: "invoice_service", PaymentService: "payment_service", ModelConfigService: "model_config_service" }[serviceName];
  const def = protoLoader.loadSync(`billing/v1/${file}.proto`, {
    includeDirs: [path.join(PROJECT_ROOT, "proto"), path.join(PROJECT_ROOT, "node_modules/google-proto-files")],
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { billing: { v1: Record<string, grpc.ServiceClientConstructor> } };
  const Ctor = pkg.billing.v1[serviceName]!;
  return new Ctor(`127.0.0.1:${harness().port}`, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
}

/** Calls a unary grpc-js method with a bearer token; resolves or rejects with the ServiceError. */
export function grpcJsCall<T = Record<string, unknown>>(c: grpc.Client & Record<string, Function>, method: string, req: unknown, token?: string): Promise<T> {
  const md = new grpc.Metadata();
  if (token) md.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    c[method]!.call(c, req, md, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

/** Awaits a call expected to fail and returns its ConnectError. */
export async function expectError(call: Promise<unknown>, code: Code, reason?: string): Promise<ConnectError> {
  let error: unknown;
  try {
    await call;
  } catch (e) {
    error = e;
  }
  expect(error, `expected ${Code[code]}`).to.be.instanceOf(ConnectError);
  const ce = error as ConnectError;
  expect(Code[ce.code], ce.message).to.equal(Code[code]);
  if (reason) expect(errorReason(ce)).to.equal(reason);
  return ce;
}

/** The ErrorInfo reason of a ConnectError. */
export function errorReason(err: ConnectError): string | undefined {
  return err.findDetails(ErrorInfoSchema)[0]?.reason;
}

/** The fields named by a ConnectError's BadRequest detail. */
export function badFields(err: ConnectError): string[] {
  return err.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations.map((v) => v.field));
}

/** Parses the grpc-status-details-bin trailer of a grpc-js error. */
export function grpcJsDetails(err: grpc.ServiceError): { reason?: string; fields: string[] } {
  const bin = err.metadata.get("grpc-status-details-bin")[0];
  if (!bin || typeof bin === "string") return { fields: [] };
  const status = decodeStatus(bin);
  let reason: string | undefined;
  const fields: string[] = [];
  for (const any of status) {
    if (any.typeUrl.endsWith("google.rpc.ErrorInfo")) reason = fromBinary(ErrorInfoSchema, any.value).reason;
    if (any.typeUrl.endsWith("google.rpc.BadRequest")) fields.push(...fromBinary(BadRequestSchema, any.value).fieldViolations.map((v) => v.field));
  }
  return { reason, fields };
}

function decodeStatus(bin: Buffer): { typeUrl: string; value: Uint8Array }[] {
  return statusDecoder(bin);
}

let statusDecoder: (bin: Buffer) => { typeUrl: string; value: Uint8Array }[] = () => [];
export async function initStatusDecoder(): Promise<void> {
  const { StatusSchema } = await import("../gen/google/rpc/status_pb.js");
  statusDecoder = (bin) => fromBinary(StatusSchema, bin).details.map((d) => ({ typeUrl: d.typeUrl, value: d.value }));
}

/** A fresh account id, so tests never share balances. */
export function newAccount(prefix = "acct"): string {
  return `${prefix}_${randomUUID().slice(0, 8)}`;
}

/** A fresh idempotency key. */
export function key(): string {
  return randomUUID();
}
