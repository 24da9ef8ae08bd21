/**
 * Raw wire helpers for the hostile-input tests: requests written byte for
 * byte (HTTP/1.1 through node:http, HTTP/2 through node:http2), so that what
 * reaches the server is exactly what the test says, and decoders for the
 * answers (Connect JSON error bodies, gRPC and gRPC-Web status).
 */
import { fromBinary } from "@bufbuild/protobuf";
import http from "node:http";
import http2 from "node:http2";
import { BadRequestSchema, ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { harness } from "../harness.js";

export interface H1Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP/1.1 request on a fresh connection (no keep-alive agent). */
export function h1(path: string, body: Buffer | string, headers: http.OutgoingHttpHeaders, opts: { port?: number; timeoutMs?: number; agent?: http.Agent } = {}): Promise<H1Answer> {
  const payload = typeof body === "string" ? Buffer.from(body, "utf8") : body;
  return new Promise<H1Answer>((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port: opts.port ?? harness().port,
        method: "POST",
        path,
        agent: opts.agent ?? false,
        headers: { "content-length": payload.length, ...headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    req.setTimeout(opts.timeoutMs ?? 15_000, () => req.destroy(new Error(`no answer to ${path} within ${opts.timeoutMs ?? 15_000} ms`)));
    req.on("error", reject);
    req.end(payload);
  });
}

/** A Connect JSON POST (HTTP/1.1) with a bearer token. */
export function connectJson(path: string, body: Buffer | string, token: string, extra: http.OutgoingHttpHeaders = {}): Promise<H1Answer> {
  return h1(path, body, { "content-type": "application/json", authorization: `Bearer ${token}`, ...extra });
}

export interface ConnectErrorBody {
  code?: string;
  message?: string;
  fields: string[];
  reason?: string;
}

/** Decodes a Connect error body: code, message, BadRequest fields, ErrorInfo reason. */
export function connectError(a: H1Answer): ConnectErrorBody {
  let json: { code?: string; message?: string; details?: { type: string; value: string }[] };
  try {
    json = JSON.parse(a.body.toString("utf8"));
  } catch {
    return { fields: [] };
  }
  const fields: string[] = [];
  let reason: string | undefined;
  for (const d of json.details ?? []) {
    const bytes = Buffer.from(d.value, "base64");
    if (d.type === "google.rpc.BadRequest") fields.push(...fromBinary(BadRequestSchema, bytes).fieldViolations.map((v) => v.field));
    if (d.type === "google.rpc.ErrorInfo") reason = fromBinary(ErrorInfoSchema, bytes).reason;
  }
  return { code: json.code, message: json.message, fields, reason };
}

/** A short description of an answer for assertion messages. */
export function describeH1(a: H1Answer): string {
  return `HTTP ${a.status} ${a.body.toString("utf8").slice(0, 300)}`;
}

/** A gRPC length-prefixed envelope. */
export function frame(message: Uint8Array, flags = 0): Buffer {
  const out = Buffer.alloc(5 + message.length);
  out[0] = flags;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

export interface H2Answer {
  status: number;
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  data: Buffer;
}

/** One HTTP/2 POST on a fresh connection (gRPC by default). */
export async function h2(path: string, body: Buffer, headers: http2.OutgoingHttpHeaders = {}, opts: { baseUrl?: string; timeoutMs?: number } = {}): Promise<H2Answer> {
  const session = http2.connect(opts.baseUrl ?? harness().baseUrl);
  session.on("error", () => {});
  try {
    return await new Promise<H2Answer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer to ${path} within ${opts.timeoutMs ?? 15_000} ms`)), opts.timeoutMs ?? 15_000);
      const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/grpc", te: "trailers", ...headers });
      const chunks: Buffer[] = [];
      let status = 0;
      let responseHeaders: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders = {};
      stream.on("response", (h) => {
        status = Number(h[":status"]);
        responseHeaders = h;
      });
      stream.on("trailers", (t) => (trailers = t));
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        clearTimeout(timer);
        resolve({ status, headers: responseHeaders, trailers, data: Buffer.concat(chunks) });
      });
      stream.on("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
      stream.end(body);
    });
  } finally {
    session.close();
  }
}

/** The grpc-status of an HTTP/2 gRPC answer (trailers, or headers of a trailers-only answer). */
export function grpcStatus(a: H2Answer): number {
  return Number(a.trailers["grpc-status"] ?? a.headers["grpc-status"]);
}

export function grpcMessage(a: H2Answer): string {
  return decodeURIComponent(String(a.trailers["grpc-message"] ?? a.headers["grpc-message"] ?? ""));
}

/** The BadRequest fields of a gRPC answer's grpc-status-details-bin. */
export function grpcFields(a: H2Answer): string[] {
  const bin = a.trailers["grpc-status-details-bin"] ?? a.headers["grpc-status-details-bin"];
  if (bin === undefined) return [];
  const status = fromBinary(StatusSchema, Buffer.from(String(bin), "base64"));
  return status.details
    .filter((d) => d.typeUrl.endsWith("google.rpc.BadRequest"))
    .flatMap((d) => fromBinary(BadRequestSchema, d.value).fieldViolations.map((v) => v.field));
}

/** The gRPC-Web status and message: from the headers, or from the trailer frame (flag 0x80) in the body. */
export function grpcWebStatus(a: H1Answer): { status: number; message: string } {
  if (a.headers["grpc-status"] !== undefined) return { status: Number(a.headers["grpc-status"]), message: String(a.headers["grpc-message"] ?? "") };
  let off = 0;
  while (off + 5 <= a.body.length) {
    const flags = a.body[off]!;
    const len = a.body.readUInt32BE(off + 1);
    const payload = a.body.subarray(off + 5, off + 5 + len);
    off += 5 + len;
    if (flags & 0x80) {
      const trailer: Record<string, string> = {};
      for (const line of payload.toString("utf8").split("\r\n")) {
        const i = line.indexOf(":");
        if (i > 0) trailer[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      return { status: Number(trailer["grpc-status"]), message: decodeURIComponent(trailer["grpc-message"] ?? "") };
    }
  }
  return { status: NaN, message: `no grpc-status (HTTP ${a.status})` };
}

/** Replaces the first occurrence of `placeholder` in `bytes` by `replacement` (same length). */
export function splice(bytes: Uint8Array, placeholder: Uint8Array, replacement: Uint8Array): Buffer {
  if (placeholder.length !== replacement.length) throw new Error("splice: lengths differ");
  const out = Buffer.from(bytes);
  const at = out.indexOf(Buffer.from(placeholder));
  if (at < 0) throw new Error("splice: placeholder not found");
  out.set(replacement, at);
  return out;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
