/**
 * Lean load generators for DeductCredits, the bench's default (`--client=lean`).
 *
 * On a small machine the load generator shares the cores with the service
 * and the database. The generated Connect clients cost about as much CPU
 * per call as the service itself (measured: ~240–370 µs per unary gRPC call
 * on a 2-core machine), so they would halve what the service can show.
 * These clients speak the same wire protocols with almost no work per call:
 *
 * - gRPC over HTTP/2: one session, one stream per call, a length-prefixed
 *   binary DeductCreditsRequest (encoded by the generated schema), success
 *   only on HTTP 200 with trailer grpc-status 0 and a non-empty message;
 * - Connect JSON over HTTP/1.1: keep-alive connections (one per call in
 *   flight), a POST of the JSON request, success only on HTTP 200 with a
 *   JSON body that carries the ledger transaction.
 *
 * Anything else counts as an error, with the status and message reported.
 */
import { create, toBinary } from "@bufbuild/protobuf";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import { DeductCreditsRequestSchema } from "../gen/billing/v1/credit_service_pb.js";
import { EchoRequestSchema } from "../gen/billing/v1/diagnostics_service_pb.js";

/** What each call deducts. */
export interface DeductCall {
  accountId: string;
  idempotencyKey: string;
}

export interface LeanClient {
  deduct(call: DeductCall): Promise<void>;
  /** DiagnosticsService.Echo: what a call costs without any work behind it. */
  echo(payload: string): Promise<void>;
  close(): void;
}

const PATH = "/billing.v1.CreditService/DeductCredits";
const ECHO_PATH = "/billing.v1.DiagnosticsService/Echo";
const OPERATION = "content_generation";

/** gRPC (binary protobuf) over one HTTP/2 connection. */
export function leanGrpcClient(baseUrl: string, token: string): LeanClient {
  // TCP_NODELAY, as grpc-js and the other gRPC clients set it.
  const session = http2.connect(baseUrl, { createConnection: (url: URL) => net.connect({ host: url.hostname, port: Number(url.port), noDelay: true }) });
  session.on("error", () => undefined); // each stream reports its own failure
  const send = (path: string, message: Uint8Array): Promise<void> => {
      const headers = {
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc+proto",
        te: "trailers",
        authorization: `Bearer ${token}`,
      };
      const frame = Buffer.allocUnsafe(5 + message.length);
      frame[0] = 0;
      frame.writeUInt32BE(message.length, 1);
      frame.set(message, 5);
      return new Promise<void>((resolve, reject) => {
        const stream = session.request(headers);
        let status = 0;
        let received = 0;
        stream.on("response", (h) => (status = Number(h[":status"])));
        stream.on("data", (chunk: Buffer) => (received += chunk.length));
        stream.on("trailers", (t) => {
          const grpcStatus = t["grpc-status"];
          if (status !== 200 || grpcStatus !== "0" || received <= 5) {
            const message = decodeURIComponent(String(t["grpc-message"] ?? ""));
            reject(new Error(`grpc-status ${String(grpcStatus)} (HTTP ${status}): ${message}`));
          } else {
            resolve();
          }
        });
        stream.on("error", reject);
        stream.on("close", () => reject(new Error(`stream closed without trailers (HTTP ${status})`))); // no-op once settled
        stream.end(frame);
      });
  };
  return {
    deduct(call) {
      const message = toBinary(
        DeductCreditsRequestSchema,
        create(DeductCreditsRequestSchema, { accountId: call.accountId, operationType: OPERATION, usage: { credits: 1n }, idempotencyKey: call.idempotencyKey }),
      );
      return send(PATH, message);
    },
    echo(payload) {
      return send(ECHO_PATH, toBinary(EchoRequestSchema, create(EchoRequestSchema, { payload })));
    },
    close() {
      session.close();
    },
  };
}

/** Connect protocol, JSON, over keep-alive HTTP/1.1 connections. */
export function leanConnectClient(baseUrl: string, token: string, connections: number): LeanClient {
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const send = (path: string, body: string, expect: string): Promise<void> => {
    const url = new URL(path, baseUrl);
    return new Promise<void>((resolve, reject) => {
        const req = http.request(
          url,
          {
            method: "POST",
            agent,
            headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body), authorization: `Bearer ${token}` },
          },
          (res) => {
            const chunks: Buffer[] = [];
            res.on("data", (c: Buffer) => chunks.push(c));
            res.on("end", () => {
              const text = Buffer.concat(chunks).toString("utf8");
              if (res.statusCode === 200 && text.includes(expect)) resolve();
              else reject(new Error(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`));
            });
            res.on("error", reject);
          },
        );
        req.on("error", reject);
        req.end(body);
      });
  };
  return {
    deduct(call) {
      return send(PATH, JSON.stringify({ accountId: call.accountId, operationType: OPERATION, usage: { credits: "1" }, idempotencyKey: call.idempotencyKey }), '"transaction"');
    },
    echo(payload) {
      return send(ECHO_PATH, JSON.stringify({ payload }), '"payload"');
    },
    close() {
      agent.destroy();
    },
  };
}
