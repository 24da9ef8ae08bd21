/**
 * The provider webhook endpoints as plain HTTP routes on the API port.
 */
import type http from "node:http";
import type http2 from "node:http2";
import type { Webhooks } from "../domain/payments/webhooks.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { HttpRoute, PlainRoute } from "../server.js";

const MAX_BODY = 1024 * 1024;

/** POST /webhooks/<provider> for every registered provider. */
export function createWebhookRoutes(webhooks: Webhooks, logger: Logger, metrics?: Metrics): Record<string, PlainRoute> {
  const respond = (res: http.ServerResponse | http2.Http2ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  const route = (provider: string): HttpRoute => async (req, res) => {
    const started = performance.now();
    const body = await readBody(req);
    if (body === "aborted") return; // the caller went away (or stalled past BODY_TIMEOUT_MS)
    if (!body) {
      metrics?.webhook(provider, "rejected_too_large");
      logger.warn("webhook", { provider, status: 413, outcome: "rejected_too_large" });
      return respond(res, 413, { received: false, outcome: "rejected_too_large" });
    }
    // A header sent twice counts as its first value.
    const header = (name: string) => {
      const v = req.headers[name];
      return Array.isArray(v) ? v[0] : v;
    };
    const result = await webhooks.receive(provider, body, header);
    metrics?.webhook(provider, result.body.outcome);
    logger.info("webhook", { provider, status: result.status, outcome: result.body.outcome, event_id: result.body.event_id, duration_ms: Math.round(performance.now() - started) });
    respond(res, result.status, result.body);
  };
  return Object.fromEntries(webhooks.providers().map((p) => [`/webhooks/${p}`, { method: "POST", handle: route(p) } satisfies PlainRoute]));
}

/** The body; undefined when larger than MAX_BODY; "aborted" when the caller went away before its end. */
function readBody(req: http.IncomingMessage | http2.Http2ServerRequest): Promise<Buffer | undefined | "aborted"> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        // Stop keeping the body but let it drain, so the 413 reaches the caller.
        chunks.length = 0;
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolve(size > MAX_BODY ? undefined : Buffer.concat(chunks)));
    req.on("error", reject);
    req.on("aborted", () => resolve("aborted"));
    req.on("close", () => resolve(req.complete ? (size > MAX_BODY ? undefined : Buffer.concat(chunks)) : "aborted"));
  });
}
