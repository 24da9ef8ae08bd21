/**
 * Authentication and role checks for every RPC (see auth/policy.ts).
 * Missing or unknown token: UNAUTHENTICATED; wrong role or another account:
 * PERMISSION_DENIED. The principal is put in the context for handlers.
 */
import type { Interceptor } from "@connectrpc/connect";
import type { ApiKeyRing } from "../auth/api-keys.js";
import { assertOwnAccount } from "../auth/ownership.js";
import { accessOf, assertRole } from "../auth/policy.js";
import { principalKey } from "../auth/principal.js";
import { BillingError, Reason } from "../domain/errors.js";

/** Creates the interceptor enforcing API keys and roles. */
export function createAuthInterceptor(keys: ApiKeyRing): Interceptor {
  return (next) => async (req) => {
    const access = accessOf(req.service.typeName, req.method.name);
    if (access === "open") return next(req);
    const header = req.header.get("authorization") ?? "";
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) throw new BillingError("unauthenticated", Reason.Unauthenticated, "missing bearer token: send 'authorization: Bearer <token>'");
    const principal = keys.lookup(match[1]!);
    if (!principal) throw new BillingError("unauthenticated", Reason.Unauthenticated, "unknown API key");
    assertRole(principal, access);
    req.contextValues.set(principalKey, principal);
    if (access !== "account" && access !== "owner") return next(req);
    const check = (message: unknown) => {
      const accountId = (message as { accountId?: unknown }).accountId;
      if (typeof accountId === "string") assertOwnAccount(principal, accountId);
    };
    if (!req.stream) {
      check(req.message);
      return next(req);
    }
    // Streaming requests (server streaming included) carry their messages in
    // an iterable: check each one before the handler sees it.
    const source = req.message;
    async function* checked() {
      for await (const message of source) {
        check(message);
        yield message;
      }
    }
    return next({ ...req, message: checked() } as typeof req);
  };
}
