/**
 * API keys and the principals they stand for.
 *
 * BILLING_API_KEYS holds comma-separated `[NAME@]ROLE[:ACCOUNT_ID]=TOKEN`
 * entries. A TOKEN written `sha256:<hex>` is matched by its hash, so the
 * environment need hold no usable secret. Presented tokens are hashed and
 * compared against every key in constant time.
 */
import { hash, timingSafeEqual } from "node:crypto";

export type Role = "admin" | "service" | "account";

/** Who is calling. `name` is what audit records say. */
export interface Principal {
  role: Role;
  /** The key's NAME, or its role when it has none. */
  name: string;
  /** For `account` keys: the one account the key is bound to. */
  accountId?: string;
}

interface ApiKey {
  principal: Principal;
  tokenHash: Buffer;
}

/** The configured keys, with lookup by presented token. */
export class ApiKeyRing {
  private constructor(private readonly keys: ApiKey[]) {}

  /** Parses BILLING_API_KEYS; throws with the offending entry's position, never its token. */
  static parse(spec: string | undefined): ApiKeyRing {
    const keys: ApiKey[] = [];
    const entries = (spec ?? "").split(",").map((e) => e.trim()).filter((e) => e !== "");
    entries.forEach((entry, i) => {
      const eq = entry.indexOf("=");
      if (eq <= 0 || eq === entry.length - 1) throw new Error(`BILLING_API_KEYS entry ${i + 1}: expected [NAME@]ROLE[:ACCOUNT_ID]=TOKEN`);
      const head = entry.slice(0, eq);
      const token = entry.slice(eq + 1);
      const at = head.indexOf("@");
      const name = at >= 0 ? head.slice(0, at) : "";
      const rest = at >= 0 ? head.slice(at + 1) : head;
      const colon = rest.indexOf(":");
      const role = colon >= 0 ? rest.slice(0, colon) : rest;
      const accountId = colon >= 0 ? rest.slice(colon + 1) : undefined;
      if (role !== "admin" && role !== "service" && role !== "account") {
        throw new Error(`BILLING_API_KEYS entry ${i + 1}: role must be admin, service or account`);
      }
      if (role === "account" && !accountId) throw new Error(`BILLING_API_KEYS entry ${i + 1}: account keys need :ACCOUNT_ID`);
      if (role !== "account" && accountId) throw new Error(`BILLING_API_KEYS entry ${i + 1}: only account keys take :ACCOUNT_ID`);
      if (at >= 0 && name === "") throw new Error(`BILLING_API_KEYS entry ${i + 1}: empty NAME before @`);
      // A token a bearer header cannot carry would be a key nobody can use.
      if (/\s/.test(token)) throw new Error(`BILLING_API_KEYS entry ${i + 1}: the token must not contain spaces`);
      let tokenHash: Buffer;
      if (token.startsWith("sha256:")) {
        const hex = token.slice("sha256:".length);
        if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error(`BILLING_API_KEYS entry ${i + 1}: sha256: needs 64 hex digits`);
        tokenHash = Buffer.from(hex, "hex");
      } else {
        tokenHash = sha256(token);
      }
      const clash = keys.findIndex((k) => k.tokenHash.equals(tokenHash));
      if (clash >= 0) throw new Error(`BILLING_API_KEYS entry ${i + 1}: the same token as entry ${clash + 1} (each key needs its own token)`);
      const principal: Principal = { role, name: name || role };
      if (accountId) principal.accountId = accountId;
      keys.push({ principal, tokenHash });
    });
    return new ApiKeyRing(keys);
  }

  get size(): number {
    return this.keys.length;
  }

  /** The principal of a presented token, or undefined. Time does not depend on which key matches. */
  lookup(token: string): Principal | undefined {
    const presented = sha256(token);
    let found: Principal | undefined;
    for (const key of this.keys) {
      if (timingSafeEqual(presented, key.tokenHash) && found === undefined) found = key.principal;
    }
    return found;
  }
}

function sha256(s: string): Buffer {
  return hash("sha256", s, "buffer");
}
