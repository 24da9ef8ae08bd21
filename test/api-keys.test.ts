/**
 * Parsing BILLING_API_KEYS.
 */
import { expect } from "chai";
import { createHash } from "node:crypto";
import { ApiKeyRing } from "../src/auth/api-keys.js";

describe("BILLING_API_KEYS", () => {
  it("parses roles, names, bound accounts and hashed tokens", () => {
    const hash = createHash("sha256").update("tok_h").digest("hex");
    const ring = ApiKeyRing.parse(`admin=tok_a,service=tok_s,account:acct_42=tok_c,ops-ana@admin=tok_d,hashed@service=sha256:${hash}`);
    expect(ring.lookup("tok_a")).to.deep.equal({ role: "admin", name: "admin" });
    expect(ring.lookup("tok_s")).to.deep.equal({ role: "service", name: "service" });
    expect(ring.lookup("tok_c")).to.deep.equal({ role: "account", name: "account", accountId: "acct_42" });
    expect(ring.lookup("tok_d")).to.deep.equal({ role: "admin", name: "ops-ana" });
    expect(ring.lookup("tok_h")).to.deep.equal({ role: "service", name: "hashed" });
    expect(ring.lookup("sha256:" + hash)).to.equal(undefined);
    expect(ring.lookup("nope")).to.equal(undefined);
  });

  it("accepts '=' inside a token", () => {
    expect(ApiKeyRing.parse("admin=abc==").lookup("abc==")?.role).to.equal("admin");
  });

  it("rejects malformed entries without echoing the token", () => {
    for (const bad of ["root=tok_secret", "account=tok_secret", "admin:acct=tok_secret", "admin=", "@admin=tok_secret", "admin=sha256:xyz"]) {
      expect(() => ApiKeyRing.parse(bad), bad).to.throw(/BILLING_API_KEYS entry 1/);
      try {
        ApiKeyRing.parse(bad);
      } catch (e) {
        expect((e as Error).message).not.to.include("tok_secret");
      }
    }
  });

  it("treats an empty value as no keys", () => {
    expect(ApiKeyRing.parse("").size).to.equal(0);
    expect(ApiKeyRing.parse(undefined).size).to.equal(0);
  });
});
