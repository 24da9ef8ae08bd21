/**
 * How the domain asks "may this caller see this resource?" without knowing
 * about keys or roles: handlers pass an `Authorize` (src/auth/ownership.ts,
 * `ownerCheck`), which the domain calls with a loaded resource's account and
 * which throws PERMISSION_DENIED when the caller may not act on it.
 */
export type Authorize = (accountId: string) => void;

/** Lets every caller through (internal callers, and handlers whose policy already decided). */
export const anyone: Authorize = () => undefined;
