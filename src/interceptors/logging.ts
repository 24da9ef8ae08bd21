/**
 * The outermost interceptor: maps every error to a ConnectError (one place,
 * src/errors.ts) and writes one JSON log line per call with the procedure,
 * code, duration and caller's key name. Tokens are never logged. Request
 * streams that cannot be read as their message are INVALID_ARGUMENT.
 */
import { Code, ConnectError, type Interceptor, type StreamResponse } from "@connectrpc/connect";
import { principalKey } from "./auth.js";
import { toConnectError } from "../errors.js";
import type { Logger } from "../logger.js";

/** Creates the error-mapping and request-logging interceptor. */
export function createLoggingInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const log = (code: Code | undefined, error?: ConnectError) => {
      const principal = req.contextValues.get(principalKey);
      const fields: Record<string, unknown> = {
        procedure: req.url ? new URL(req.url).pathname : `/${req.service.typeName}/${req.method.name}`,
        protocol: req.header.get("content-type") ?? "",
        code: code === undefined ? "ok" : Code[code]!.replace(/[A-Z]/g, (c, i: number) => (i ? "_" : "") + c.toLowerCase()),
        duration_ms: Math.round((performance.now() - started) * 100) / 100,
        caller: principal.name === "anonymous" ? undefined : principal.name,
      };
      if (error) fields.error = error.rawMessage;
      const level = code === Code.Internal || code === Code.Unknown || code === Code.DataLoss ? "error" : code === Code.Unavailable ? "warn" : "info";
      logger[level]("rpc", fields);
    };
    if (req.stream) req = { ...req, message: clientInput(req.message, req.method.input.typeName) };
    let res;
    try {
      res = await next(req);
    } catch (err) {
      const ce = toConnectError(err, logger, req.method.name);
      log(ce.code, ce);
      throw ce;
    }
    if (!res.stream) {
      log(undefined);
      return res;
    }
    const source = res.message;
    async function* guarded() {
      try {
        yield* source;
        log(undefined);
      } catch (err) {
        const ce = toConnectError(err, logger, req.method.name);
        log(ce.code, ce);
        throw ce;
      }
    }
    return { ...res, message: guarded() } as StreamResponse;
  };
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
