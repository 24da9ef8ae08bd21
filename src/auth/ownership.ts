/**
 * The one ownership rule: account keys act only on their own account
 * (PERMISSION_DENIED otherwise); admin and service keys act on any. The auth
 * interceptor applies it to a request's top-level `account_id`; handlers
 * apply it to nested account ids (`assertOwnAccount`) and to resources
 * named by id, through the domain's `Authorize` callback (`ownerCheck`),
 * which the domain calls once it has loaded the resource.
 */
import type { HandlerContext } from "@connectrpc/connect";
import type { Authorize } from "../domain/access.js";
import type { Principal } from "./api-keys.js";
import { assertAccountAccess } from "./policy.js";
import { principalOf } from "./principal.js";

/** Throws PERMISSION_DENIED unless `principal` may act on `accountId`. */
export function assertOwnAccount(principal: Principal, accountId: string): void {
  assertAccountAccess(principal, accountId);
}

/** The ownership check of the current caller, for the domain to apply to a loaded resource's account. */
export function ownerCheck(ctx: HandlerContext): Authorize {
  const principal = principalOf(ctx);
  return (accountId) => assertAccountAccess(principal, accountId);
}
