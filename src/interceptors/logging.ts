/**
 * The outermost interceptor, around every call:
 * - request id and trace context: `x-request-id` (taken when the caller
 *   sends a sane one, else generated) and the trace id of a W3C
 *   `traceparent` are on every log line of the call, and `x-request-id` is
 *   answered in the response headers (error responses included);
 * - a draining server refuses new calls with UNAVAILABLE;
 * - every error is mapped to a ConnectError (one place, src/errors.ts);
 * - one JSON log line per call (procedure, protocol, code, duration, the
 *   key's name; never tokens) and its metrics (count by code, latency).
 * Request streams that cannot be read as their message are INVALID_ARGUMENT.
 */
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { requestIdOf } from "../request-id.js";
import { principalKey } from "../auth/principal.js";
import { BillingError, Reason } from "../domain/errors.js";
import { toConnectError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { Lifecycle } from "../server.js";

/** Codes as they appear in logs and metrics: "invalid_argument". */
const CODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(Code)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => [v, k.replace(/[A-Z]/g, (c, i: number) => (i ? "_" : "") + c.toLowerCase())]),
);
const TRACEPARENT = /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$/;

/** Creates the request-id, error-mapping, logging and metrics interceptor. */
export function createLoggingInterceptor(logger: Logger, metrics?: Metrics, lifecycle?: Lifecycle): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const requestId = requestIdOf(req.header.get("x-request-id"));
    // The call's logger carries its ids; built only when a line is written (the hot path logs nothing at warn).
    let callLogger: Logger | undefined;
    const log = () => {
      if (!callLogger) {
        const trace = TRACEPARENT.exec(req.header.get("traceparent") ?? "");
        callLogger = logger.child(trace ? { request_id: requestId, trace_id: trace[1], parent_span_id: trace[2] } : { request_id: requestId });
      }
      return callLogger;
    };
    const procedure = `/${req.service.typeName}/${req.method.name}`;
    const protocol = protocolOf(req.header.get("content-type") ?? "");
    const finish = (code: Code | undefined, error?: ConnectError) => {
      const codeName = code === undefined ? "ok" : CODE_NAMES[code]!;
      const seconds = (performance.now() - started) / 1000;
      metrics?.rpc(procedure, protocol, codeName, seconds);
      // A caller that went away (cancelled) is not an error of ours.
      const level = code === Code.Internal || code === Code.Unknown || code === Code.DataLoss ? "error" : code === Code.Unavailable ? "warn" : "info";
      if (!logger.enabled(level)) return;
      const principal = req.contextValues.get(principalKey);
      const fields: Record<string, unknown> = {
        procedure,
        protocol,
        code: codeName,
        duration_ms: Math.round(seconds * 100_000) / 100,
        caller: principal.name === "anonymous" ? undefined : principal.name,
      };
      if (error) fields.error = error.rawMessage;
      log()[level]("rpc", fields);
    };
    const failed = (err: unknown): ConnectError => {
      const ce = toConnectError(err, log(), req.method.name);
      ce.metadata.set("x-request-id", requestId);
      finish(ce.code, ce);
      return ce;
    };
    if (lifecycle?.draining) throw failed(new BillingError("unavailable", Reason.Draining, "the server is shutting down; retry on another instance"));
    if (req.stream) req = { ...req, message: clientInput(req.message, req.method.input.typeName) };
    let res;
    try {
      res = await next(req);
    } catch (err) {
      throw failed(err);
    }
    res.header.set("x-request-id", requestId);
    if (!res.stream) {
      finish(undefined);
      return res;
    }
    const source = res.message;
    async function* guarded() {
      let done = false;
      try {
        yield* source;
        done = true;
        finish(undefined);
      } catch (err) {
        done = true;
        throw failed(err);
      } finally {
        if (!done) finish(Code.Canceled); // the caller stopped reading (cancelled or went away)
      }
    }
    return { ...res, message: guarded() } as StreamResponse;
  };
}

/** The protocol of a call, from its content type. */
function protocolOf(contentType: string): string {
  if (contentType.startsWith("application/grpc-web")) return "grpc-web";
  if (contentType.startsWith("application/grpc")) return "grpc";
  return "connect";
}

/**
 * A streaming call's request messages, as connect-node reads them: bytes
 * that are not the request message (connect-node says INTERNAL) are the
 * caller's error, INVALID_ARGUMENT, as on the unary path (src/unary.ts).
 */
async function* clientInput<T>(messages: AsyncIterable<T>, typeName: string): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (err) {
    if (err instanceof ConnectError && (err.code === Code.Internal || err.code === Code.Unknown)) {
      throw new ConnectError(`the request is not a valid ${typeName} (${err.rawMessage})`, Code.InvalidArgument);
    }
    throw err;
  }
}
