/**
 * Unary calls on every protocol, in one pass, without connect-node's
 * streaming pipeline.
 *
 * connect-node serves every call, unary ones included, through a chain of
 * async iterables (split envelopes, decompress, parse, invoke, serialize,
 * compress, join, catch). On the 2-core machines we run on, that chain costs
 * about 340 µs of CPU per gRPC call and most of the garbage that makes GC
 * pauses the p99. This path does the same work for unary calls in one pass:
 * read the body, decompress, parse, invoke, answer. It is built from
 * connect's own pieces so that the behaviour stays connect's: a
 * HandlerContext with the same fields and signals (deadline, client cancel),
 * the same interceptors (auth, logging, error mapping) through
 * `invokeUnaryImplementation`, the same serialization limits, timeout
 * parsing, trailer status and Connect error encoding.
 *
 * It also holds the input rules that connect-node cannot be told:
 * - a body that is not the request message (bytes that do not parse, a bad
 *   envelope, a compressed flag without an encoding, corrupt gzip) is
 *   INVALID_ARGUMENT, never INTERNAL;
 * - Connect JSON is read strictly (strict-input.ts): canonical proto3 JSON
 *   only, unknown fields refused, invalid UTF-8 and a BOM refused, each
 *   refusal naming its field; no request on this path may carry a
 *   "__proto__" map key (protobuf-es would drop it silently);
 * - the request body must arrive within BODY_TIMEOUT_MS (or the call's
 *   deadline, if sooner).
 *
 * It takes a request when all of these hold; anything else (streaming
 * methods, Connect GET, gRPC-Web text or JSON, other encodings) goes to
 * connect-node unchanged:
 * - POST to the path of a unary method that the routes mounted;
 * - gRPC: HTTP/2, content-type `application/grpc[+proto]`;
 *   gRPC-Web: `application/grpc-web[+proto]`;
 *   Connect: `application/json` (optionally `; charset=utf-8`) or `application/proto`;
 * - request encoding identity, gzip or br.
 * Responses are sent uncompressed, which every protocol allows whatever the
 * client accepts.
 */
import type { DescMethod, DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  createContextValues,
  createMethodImplSpec,
  createServiceImplSpec,
  type ConnectRouter,
  type HandlerContext,
  type Interceptor,
  type MethodImplSpec,
} from "@connectrpc/connect";
import { compressionBrotli, compressionGzip } from "@connectrpc/connect-node";
import { createMethodSerializationLookup, invokeUnaryImplementation, type Compression, type Serialization } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, errorToJsonBytes, parseTimeout as parseConnectTimeout, trailerMux } from "@connectrpc/connect/protocol-connect";
import { parseTimeout as parseGrpcTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import type http from "node:http";
import type http2 from "node:http2";
import { binaryEncoder, type BinaryEncoder } from "./binary-encoder.js";
import { BillingError } from "./domain/errors.js";
import { jsonEncoder, type JsonEncoder } from "./json-encoder.js";
import { connectErrorOf } from "./errors.js";
import { requestIdOf } from "./request-id.js";
import { readStrictJson, refuseProtoKeys } from "./strict-input.js";

export interface UnaryPathOptions {
  interceptors: Interceptor[];
  /** Largest accepted request message, as for connect-node. */
  readMaxBytes: number;
  /** How long a request body may take to arrive (the call's deadline may be sooner). */
  bodyTimeoutMs: number;
}

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

export interface UnaryPath {
  /** Wraps a routes function so that the unary methods it mounts are also recorded here. */
  recordRoutes(routes: (router: ConnectRouter) => void): (router: ConnectRouter) => void;
  /** Serves a request and returns true if it is a unary call this path takes; otherwise touches nothing. */
  handle(req: Request, res: Response): boolean;
}

type Protocol = "grpc" | "grpc-web" | "connect";

interface Route {
  spec: MethodImplSpec & { kind: "unary" };
  binaryIn: Serialization<unknown>;
  /** The response in binary (src/binary-encoder.ts: toBinary's bytes, compiled for the type). */
  binaryOut: BinaryEncoder;
  /** The response in Connect JSON (src/json-encoder.ts: toJsonString's text, compiled for the type). */
  jsonOut: JsonEncoder;
}

/** What a request is, once its headers have been read. */
interface Shape {
  protocol: Protocol;
  /** Connect only: the JSON codec. */
  json: boolean;
  compression: Compression | undefined;
}

const GRPC_CONTENT_TYPE = /^application\/grpc(?:\+proto)?$/i;
const GRPC_WEB_CONTENT_TYPE = /^application\/grpc-web(?:\+proto)?$/i;
const CONNECT_JSON_CONTENT_TYPE = /^application\/json(?:;\s*charset=utf-?8)?$/i;
const CONNECT_PROTO_CONTENT_TYPE = /^application\/proto$/i;
const ACCEPT_ENCODING = "gzip, br";
const COMPRESSED_FLAG = 0b00000001;
/** setTimeout's limit; a longer deadline (grpc-timeout allows ~11 years) needs no timer. */
const MAX_TIMER_MS = 2_147_483_647;
/** The reason a call's signal is aborted with when the client resets the call before its answer. */
const CLIENT_CANCELLED = new ConnectError("the client cancelled the call", Code.Canceled);

/** Creates the unary path; mount it with `recordRoutes` and call `handle` for each request. */
export function createUnaryPath(options: UnaryPathOptions): UnaryPath {
  const routes = new Map<string, Route>();
  // The signals of the calls in progress. A shutdown does not abort them: a
  // drain lets unary calls finish and answers them (server.ts).
  const live = new Set<AbortController>();
  const limits = { readMaxBytes: options.readMaxBytes, writeMaxBytes: 0xffffffff };

  const add = (spec: MethodImplSpec) => {
    if (spec.kind !== "unary") return;
    const serialization = createMethodSerializationLookup(spec.method as DescMethod & { methodKind: "unary" }, undefined, undefined, limits);
    routes.set(`/${spec.method.parent.typeName}/${spec.method.name}`, {
      spec: spec as Route["spec"],
      binaryIn: serialization.getI(true) as Serialization<unknown>,
      binaryOut: binaryEncoder(spec.method.output),
      jsonOut: jsonEncoder(spec.method.output),
    });
  };

  return {
    recordRoutes(mount) {
      return (router) => {
        const recording: ConnectRouter = {
          get handlers() {
            return router.handlers;
          },
          service(service: DescService, implementation: object, serviceOptions?: object) {
            router.service(service, implementation as never, serviceOptions);
            if (!serviceOptions) for (const spec of Object.values(createServiceImplSpec(service, implementation as never).methods)) add(spec);
            return recording;
          },
          rpc(method: DescMethod, impl: unknown, methodOptions?: object) {
            router.rpc(method, impl as never, methodOptions);
            if (!methodOptions) add(createMethodImplSpec(method, impl as never));
            return recording;
          },
        } as unknown as ConnectRouter;
        mount(recording);
      };
    },

    handle(req, res) {
      if (req.method !== "POST") return false;
      const route = routes.get(req.url ?? "");
      if (!route) return false;
      const shape = shapeOf(req);
      if (!shape) return false;
      void serve(route, shape, req, res, options, live);
      return true;
    },
  };
}

/** The protocol, codec and compression of a request this path takes; undefined for anything else. */
function shapeOf(req: Request): Shape | undefined {
  const contentType = req.headers["content-type"];
  if (contentType === undefined) return undefined;
  let protocol: Protocol;
  let json = false;
  if (GRPC_CONTENT_TYPE.test(contentType)) {
    if (req.httpVersionMajor !== 2) return undefined;
    protocol = "grpc";
  } else if (GRPC_WEB_CONTENT_TYPE.test(contentType)) protocol = "grpc-web";
  else if (CONNECT_PROTO_CONTENT_TYPE.test(contentType)) protocol = "connect";
  else if (CONNECT_JSON_CONTENT_TYPE.test(contentType)) {
    protocol = "connect";
    json = true;
  } else return undefined;
  const encoding = headerValue(req.headers[protocol === "connect" ? "content-encoding" : "grpc-encoding"]);
  let compression: Compression | undefined;
  if (encoding === null || encoding === "identity") compression = undefined;
  else if (encoding === "gzip") compression = compressionGzip;
  else if (encoding === "br") compression = compressionBrotli;
  else return undefined; // connect-node answers unsupported encodings as each protocol says
  return { protocol, json, compression };
}

async function serve(route: Route, shape: Shape, req: Request, res: Response, options: UnaryPathOptions, live: Set<AbortController>): Promise<void> {
  const timeout =
    shape.protocol === "connect"
      ? parseConnectTimeout(headerValue(req.headers["connect-timeout-ms"]), Number.MAX_SAFE_INTEGER)
      : parseGrpcTimeout(headerValue(req.headers["grpc-timeout"]), Number.MAX_SAFE_INTEGER);
  const call = new AbortController();
  live.add(call);
  const deadline = timeout.timeoutMs === undefined ? undefined : Date.now() + timeout.timeoutMs;
  const timer =
    timeout.timeoutMs === undefined || timeout.timeoutMs > MAX_TIMER_MS
      ? undefined
      : setTimeout(() => call.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)), timeout.timeoutMs);
  const context: HandlerContext = {
    service: route.spec.method.parent,
    method: route.spec.method,
    protocolName: shape.protocol,
    requestMethod: "POST",
    url: `http://${headerValue(req.headers[":authority"]) ?? headerValue(req.headers.host) ?? "localhost"}${req.url}`,
    signal: call.signal,
    timeoutMs: () => (deadline === undefined ? undefined : deadline - Date.now()),
    requestHeader: webHeaders(req.headers),
    responseHeader: responseHeaderOf(shape),
    responseTrailer: new Headers(shape.protocol === "connect" ? undefined : { "grpc-status": "0" }),
    values: createContextValues(),
  };
  let answered = false;
  const onClose = () => {
    if (!answered) call.abort(CLIENT_CANCELLED);
  };
  res.once("close", onClose);
  let body: Buffer | undefined;
  let error: ConnectError | undefined;
  let invoked = false;
  try {
    if (timeout.error) throw timeout.error;
    const bodyTimeoutMs = deadline === undefined ? options.bodyTimeoutMs : Math.min(options.bodyTimeoutMs, Math.max(0, deadline - Date.now()));
    const raw = await readBody(req, options.readMaxBytes + 5, bodyTimeoutMs);
    const message = await decodeRequest(route, shape, raw, options.readMaxBytes);
    invoked = true;
    const output = await invokeUnaryImplementation(route.spec, context, message as never, options.interceptors);
    body = encodeAnswer(route, shape, output);
  } catch (err) {
    error = err instanceof ConnectError ? err : new ConnectError("internal error", Code.Internal, undefined, undefined, err);
    // Refused before the interceptors ran (an unreadable body): still answer a request id.
    if (!invoked) error.metadata.set("x-request-id", requestIdOf(headerValue(req.headers["x-request-id"])));
  }
  answered = true;
  clearTimeout(timer);
  live.delete(call);
  res.off("close", onClose);
  answer(req, res, shape, context, body, error);
}

/**
 * The response message encoded for the protocol; gRPC and gRPC-Web answers
 * enveloped (the header is written in the room left before the message).
 * A message that cannot be encoded is INTERNAL, saying why, as connect says it.
 */
function encodeAnswer(route: Route, shape: Shape, output: unknown): Buffer {
  try {
    if (shape.json) return route.jsonOut(output as object);
    return shape.protocol === "connect" ? route.binaryOut(output as object) : enveloped(route.binaryOut(output as object, 5));
  } catch (err) {
    throw new ConnectError(`serialize ${shape.json ? "JSON" : "binary"}: ${err instanceof Error ? err.message : String(err)}`, Code.Internal, undefined, undefined, err);
  }
}

function responseHeaderOf(shape: Shape): Headers {
  switch (shape.protocol) {
    case "grpc":
      return new Headers({ "content-type": "application/grpc+proto", "grpc-accept-encoding": ACCEPT_ENCODING });
    case "grpc-web":
      return new Headers({ "content-type": "application/grpc-web+proto", "grpc-accept-encoding": ACCEPT_ENCODING });
    case "connect":
      return new Headers({ "content-type": shape.json ? "application/json" : "application/proto", "accept-encoding": ACCEPT_ENCODING });
  }
}

/**
 * The request message. Bytes that are not the request message are the
 * caller's error: INVALID_ARGUMENT, where connect-node would say INTERNAL.
 */
async function decodeRequest(route: Route, shape: Shape, raw: Buffer, readMaxBytes: number): Promise<unknown> {
  let bytes: Uint8Array;
  if (shape.protocol === "connect") {
    if (raw.length > readMaxBytes) throw new ConnectError(`message size ${raw.length} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
    bytes = shape.compression ? await decompress(shape.compression, raw, readMaxBytes) : raw;
  } else {
    const { flags, message } = oneEnvelope(raw, readMaxBytes);
    if (flags === COMPRESSED_FLAG) {
      if (!shape.compression) throw new ConnectError("protocol error: compressed message without a grpc-encoding header", Code.InvalidArgument);
      bytes = await decompress(shape.compression, message, readMaxBytes);
    } else bytes = message;
  }
  if (shape.json) {
    try {
      return readStrictJson(route.spec.method.input, bytes);
    } catch (err) {
      throw err instanceof BillingError ? connectErrorOf(err) : err;
    }
  }
  try {
    refuseProtoKeys(route.spec.method.input, bytes);
  } catch (err) {
    throw err instanceof BillingError ? connectErrorOf(err) : err;
  }
  try {
    return route.binaryIn.parse(bytes);
  } catch (err) {
    const reason = err instanceof ConnectError ? err.rawMessage : String(err);
    throw new ConnectError(`the request is not a valid ${route.spec.method.input.typeName} (${reason})`, Code.InvalidArgument);
  }
}

async function decompress(compression: Compression, bytes: Uint8Array, readMaxBytes: number): Promise<Uint8Array> {
  try {
    return await compression.decompress(bytes, readMaxBytes);
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.ResourceExhausted) throw err;
    throw new ConnectError(`the request is not valid ${compression.name} data`, Code.InvalidArgument);
  }
}

/**
 * Writes the answer as the protocol says (`body` is the encoded response,
 * already enveloped for gRPC and gRPC-Web); a call the client already reset is
 * dropped. When the body was not read to its end (too large, too slow), the
 * connection (HTTP/1.1) or stream (HTTP/2) is closed after the answer.
 */
function answer(req: Request, res: Response, shape: Shape, context: HandlerContext, body: Uint8Array | undefined, error: ConnectError | undefined) {
  if (res.writableEnded || ("stream" in res && res.stream.destroyed)) return;
  let status = 200;
  let headers = context.responseHeader;
  let out: Uint8Array | undefined;
  switch (shape.protocol) {
    case "grpc":
      if (error) setTrailerStatus(context.responseTrailer, error);
      (res as http2.Http2ServerResponse).addTrailers(nodeHeaders(context.responseTrailer));
      out = body && !error ? body : undefined;
      break;
    case "grpc-web": {
      if (error) setTrailerStatus(context.responseTrailer, error);
      const trailer = envelope(trailerFlag, trailerSerialize(context.responseTrailer));
      out = body && !error ? Buffer.concat([body, trailer]) : trailer;
      break;
    }
    case "connect":
      // As connect's own unary handler: error metadata joins the headers, trailers travel as "trailer-" headers.
      if (error) {
        status = codeToHttpStatus(error.code);
        headers.set("content-type", "application/json");
        error.metadata.forEach((value, key) => headers.set(key, value));
        out = errorToJsonBytes(error, {});
      } else out = body;
      headers = trailerMux(headers, context.responseTrailer);
      break;
  }
  const unread = !req.complete;
  if (unread && !("stream" in req)) headers.set("connection", "close");
  res.writeHead(status, nodeHeaders(headers));
  if (unread && "stream" in req) res.once("finish", () => req.stream.close());
  if (out) res.end(out);
  else res.end();
}

/** The request body, refusing more than `limit` bytes or a body slower than `timeoutMs`. */
function readBody(req: Request, limit: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        req.resume(); // drain and discard the rest
        reject(new ConnectError(`message is larger than configured readMaxBytes ${limit - 5}`, Code.ResourceExhausted));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size));
    };
    const onError = (err?: Error) => {
      cleanup();
      reject(new ConnectError(`reading the request failed: ${err?.message ?? "the client reset the stream"}`, Code.Canceled));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new ConnectError(`the request body did not arrive within ${timeoutMs} ms`, Code.DeadlineExceeded));
    }, Math.min(timeoutMs, MAX_TIMER_MS));
    const cleanup = () => {
      clearTimeout(timer);
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("aborted", onError);
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("aborted", onError);
  });
}

/** The one enveloped message of a unary gRPC / gRPC-Web request body. Errors match connect's. */
function oneEnvelope(body: Buffer, readMaxBytes: number): { flags: number; message: Uint8Array } {
  if (body.length === 0) throw new ConnectError("protocol error: missing input message for unary method", Code.Unimplemented);
  if (body.length < 5) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  const flags = body[0]!;
  const length = body.readUInt32BE(1);
  if (length > readMaxBytes) throw new ConnectError(`message size ${length} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
  if (body.length < 5 + length) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  if (body.length > 5 + length) {
    if (body.length - 5 - length >= 5) throw new ConnectError("protocol error: received extra input message for unary method", Code.Unimplemented);
    throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  }
  if (flags !== 0 && flags !== COMPRESSED_FLAG) throw new ConnectError(`protocol error: unexpected envelope flags ${flags}`, Code.InvalidArgument);
  return { flags, message: body.subarray(5) };
}

/** Fills in the envelope header (uncompressed) of a message encoded after 5 bytes of room. */
function enveloped(frame: Buffer): Buffer {
  frame[0] = 0;
  frame.writeUInt32BE(frame.length - 5, 1);
  return frame;
}

function envelope(flags: number, message: Uint8Array): Buffer {
  const frame = Buffer.allocUnsafe(5 + message.length);
  frame[0] = flags;
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}

function headerValue(value: string | string[] | undefined): string | null {
  if (value === undefined) return null;
  return Array.isArray(value) ? value.join(", ") : value;
}

/** Node's request headers as fetch Headers, without HTTP/2 pseudo-headers (as connect-node does). */
function webHeaders(headers: http.IncomingHttpHeaders): Headers {
  const out = new Headers();
  for (const name in headers) {
    if (name.charCodeAt(0) === 58 /* ":" */) continue;
    const value = headers[name];
    try {
      if (Array.isArray(value)) for (const v of value) out.append(name, v);
      else if (value !== undefined) out.append(name, value);
    } catch {
      // A header value fetch's Headers refuses (Node accepted it): not ours to read.
    }
  }
  return out;
}

function nodeHeaders(headers: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  headers.forEach((value, name) => (out[name] = value));
  return out;
}
