/**
 * Who is calling: the principal the auth interceptor found for the API key,
 * carried in the call's context for handlers.
 */
import { createContextKey, type HandlerContext } from "@connectrpc/connect";
import type { Principal } from "./api-keys.js";

const NOBODY: Principal = { role: "account", name: "anonymous", accountId: "\u0000" };

/** The authenticated caller of the current RPC (set by the auth interceptor). */
export const principalKey = createContextKey<Principal>(NOBODY, { description: "authenticated principal" });

/** The caller of the RPC a handler is serving. */
export function principalOf(ctx: HandlerContext): Principal {
  return ctx.values.get(principalKey);
}
