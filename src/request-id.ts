/**
 * Request ids: a caller's `x-request-id` is kept when it is sane (1-128
 * visible ASCII characters), otherwise one is generated. The logging
 * interceptor puts it on the call's log lines and response; the unary path
 * answers it too for requests refused before any interceptor runs.
 */
import { randomUUID } from "node:crypto";

const SANE = /^[\x21-\x7e]{1,128}$/;

/** The request id for a call whose `x-request-id` header is `sent`. */
export function requestIdOf(sent: string | null | undefined): string {
  return typeof sent === "string" && SANE.test(sent) ? sent : randomUUID();
}
