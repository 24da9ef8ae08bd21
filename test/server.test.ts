/**
 * The server itself: one port for every protocol, health, reflection, CORS,
 * unknown routes, and RPCs that are not built yet.
 */
import { create } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { expect } from "chai";
import http from "node:http";
import http2 from "node:http2";
import { CreditService } from "../gen/billing/v1/credit_service_pb.js";
import { ServerReflection, ServerReflectionRequestSchema } from "../gen/grpc/reflection/v1/reflection_pb.js";
import * as alpha from "../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { ACCOUNT_A, CORS_ORIGIN, PROTOCOLS, TOKENS, client, expectError, harness } from "./harness.js";

function rawRequest(options: http.RequestOptions, body?: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port: harness().port, ...options }, (res) => {
      let data = "";
      res.on("data", (c) => (data += c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: data }));
    });
    req.on("error", reject);
    req.end(body);
  });
}

describe("server", () => {
  describe("one port, every protocol", () => {
    for (const protocol of PROTOCOLS) {
      it(`answers GetBalance over ${protocol}`, async () => {
        const res = await client(CreditService, TOKENS.accountA, protocol).getBalance({ accountId: ACCOUNT_A });
        expect(res.balance?.accountId).to.equal(ACCOUNT_A);
      });
    }

    it("serves Connect JSON to a plain HTTP/1.1 POST with zero values present", async () => {
      const res = await rawRequest(
        { method: "POST", path: "/billing.v1.CreditService/GetBalance", headers: { "content-type": "application/json", authorization: `Bearer ${TOKENS.accountA}` } },
        JSON.stringify({ accountId: ACCOUNT_A }),
      );
      expect(res.status).to.equal(200);
      const json = JSON.parse(res.body);
      expect(json.balance).to.include.keys("balance", "reserved", "available");
    });

    it("serves a plain HTTP/2 prior-knowledge POST", async () => {
      const session = http2.connect(harness().baseUrl);
      try {
        const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
          const req = session.request({
            ":method": "POST",
            ":path": "/billing.v1.CreditService/GetBalance",
            "content-type": "application/json",
            authorization: `Bearer ${TOKENS.accountA}`,
          });
          let data = "";
          let status = 0;
          req.on("response", (h) => (status = Number(h[":status"])));
          req.on("data", (c) => (data += c));
          req.on("end", () => resolve({ status, body: data }));
          req.on("error", reject);
          req.end(JSON.stringify({ accountId: ACCOUNT_A }));
        });
        expect(status).to.equal(200);
        expect(JSON.parse(body).balance.accountId).to.equal(ACCOUNT_A);
      } finally {
        session.close();
      }
    });

    it("answers an unknown path with 404", async () => {
      const res = await rawRequest({ method: "POST", path: "/nope", headers: { "content-type": "application/json" } }, "{}");
      expect(res.status).to.equal(404);
    });
  });

  describe("grpc.health.v1", () => {
    it("reports SERVING for the server and each service, without a token", async () => {
      const health = createClient(Health, createGrpcTransport({ baseUrl: harness().baseUrl }));
      for (const service of ["", "billing.v1.CreditService", "billing.v1.PaymentService"]) {
        const res = await health.check({ service });
        expect(res.status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
      }
    });

    it("answers NOT_FOUND for an unknown service", async () => {
      const health = createClient(Health, createGrpcTransport({ baseUrl: harness().baseUrl }));
      await expectError(health.check({ service: "nope.v1.Nope" }), Code.NotFound);
    });

    it("streams the status on Watch", async () => {
      const health = createClient(Health, createGrpcTransport({ baseUrl: harness().baseUrl }));
      const abort = new AbortController();
      for await (const res of health.watch({ service: "" }, { signal: abort.signal })) {
        expect(res.status).to.equal(HealthCheckResponse_ServingStatus.SERVING);
        abort.abort();
        break;
      }
    });
  });

  describe("server reflection", () => {
    it("v1 lists every service without a token", async () => {
      const reflection = createClient(ServerReflection, createGrpcTransport({ baseUrl: harness().baseUrl }));
      const names: string[] = [];
      async function* requests() {
        yield create(ServerReflectionRequestSchema, { messageRequest: { case: "listServices", value: "" } });
      }
      for await (const res of reflection.serverReflectionInfo(requests())) {
        if (res.messageResponse.case === "listServicesResponse") names.push(...res.messageResponse.value.service.map((s) => s.name));
      }
      expect(names).to.include.members([
        "billing.v1.CreditService",
        "billing.v1.InvoiceService",
        "billing.v1.PaymentService",
        "billing.v1.ModelConfigService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
      ]);
    });

    it("v1alpha returns the file of a symbol with its dependencies", async () => {
      const reflection = createClient(alpha.ServerReflection, createGrpcTransport({ baseUrl: harness().baseUrl }));
      async function* requests() {
        yield create(alpha.ServerReflectionRequestSchema, { messageRequest: { case: "fileContainingSymbol", value: "billing.v1.CreditService.GetBalance" } });
        yield create(alpha.ServerReflectionRequestSchema, { messageRequest: { case: "fileContainingSymbol", value: "no.such.Symbol" } });
      }
      const answers = [];
      for await (const res of reflection.serverReflectionInfo(requests())) answers.push(res.messageResponse);
      expect(answers[0]!.case).to.equal("fileDescriptorResponse");
      expect((answers[0]!.value as { fileDescriptorProto: Uint8Array[] }).fileDescriptorProto.length).to.be.greaterThan(3);
      expect(answers[1]!.case).to.equal("errorResponse");
    });
  });

  describe("CORS", () => {
    it("answers a preflight from an allowed origin", async () => {
      const res = await rawRequest({
        method: "OPTIONS",
        path: "/billing.v1.CreditService/GetBalance",
        headers: { origin: CORS_ORIGIN, "access-control-request-method": "POST", "access-control-request-headers": "content-type,authorization,connect-protocol-version" },
      });
      expect(res.status).to.equal(204);
      expect(res.headers["access-control-allow-origin"]).to.equal(CORS_ORIGIN);
      expect(String(res.headers["access-control-allow-headers"]).toLowerCase()).to.include("authorization");
      expect(String(res.headers["access-control-allow-methods"])).to.include("POST");
    });

    it("refuses a preflight from another origin", async () => {
      const res = await rawRequest({
        method: "OPTIONS",
        path: "/billing.v1.CreditService/GetBalance",
        headers: { origin: "https://evil.example", "access-control-request-method": "POST" },
      });
      expect(res.status).to.equal(403);
      expect(res.headers["access-control-allow-origin"]).to.equal(undefined);
    });

    it("exposes Connect headers on actual responses to allowed origins", async () => {
      const res = await rawRequest(
        {
          method: "POST",
          path: "/billing.v1.CreditService/GetBalance",
          headers: { origin: CORS_ORIGIN, "content-type": "application/json", authorization: `Bearer ${TOKENS.accountA}` },
        },
        JSON.stringify({ accountId: ACCOUNT_A }),
      );
      expect(res.status).to.equal(200);
      expect(res.headers["access-control-allow-origin"]).to.equal(CORS_ORIGIN);
    });
  });
});
