/**
 * The provider webhook endpoints as plain HTTP routes on the API port.
 */
import type http from "node:http";
import type http2 from "node:http2";
import type { Webhooks } from "../domain/payments/webhooks.js";
import type { Logger } from "../logger.js";
import type { HttpRoute } from "../server.js";

const MAX_BODY = 1024 * 1024;

/** POST /webhooks/stripe and POST /webhooks/paypal. */
export function createWebhookRoutes(webhooks: Webhooks, logger: Logger): Record<string, HttpRoute> {
  const respond = (res: http.ServerResponse | http2.Http2ServerResponse, status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  const route = (provider: "stripe" | "paypal"): HttpRoute => async (req, res) => {
    const started = performance.now();
    const body = await readBody(req);
    if (!body) return respond(res, 413, { received: false, outcome: "rejected_too_large" });
    const header = (name: string) => {
      const v = req.headers[name];
      return Array.isArray(v) ? v[0] : v;
    };
    const result =
      provider === "stripe"
        ? await webhooks.stripe(body, header("stripe-signature"))
        : await webhooks.paypal(body, { id: header("paypal-transmission-id"), time: header("paypal-transmission-time"), sig: header("paypal-transmission-sig") });
    logger.info("webhook", { provider, status: result.status, outcome: result.body.outcome, event_id: result.body.event_id, duration_ms: Math.round(performance.now() - started) });
    respond(res, result.status, result.body);
  };
  return { "/webhooks/stripe": route("stripe"), "/webhooks/paypal": route("paypal") };
}

function readBody(req: http.IncomingMessage | http2.Http2ServerRequest): Promise<Buffer | undefined> {
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
  });
}
