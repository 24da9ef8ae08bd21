/**
 * Standard Webhooks signing (https://www.standardwebhooks.com): the secret is
 * "whsec_" + base64 of random bytes; the signed content is
 * `${webhook-id}.${webhook-timestamp}.${body}`; the signature is HMAC-SHA256
 * keyed with the base64-decoded secret, sent as `v1,<base64>`.
 */
import { createHmac, randomBytes } from "node:crypto";

const PREFIX = "whsec_";

/** A new signing secret (24 random bytes, as the Standard Webhooks libraries make them). */
export function newSigningSecret(): string {
  return PREFIX + randomBytes(24).toString("base64");
}

/** The `webhook-signature` header value for one send. */
export function signWebhook(secret: string, id: string, timestampSeconds: number, body: string): string {
  const key = Buffer.from(secret.startsWith(PREFIX) ? secret.slice(PREFIX.length) : secret, "base64");
  return "v1," + createHmac("sha256", key).update(`${id}.${timestampSeconds}.${body}`).digest("base64");
}
