/**
 * The request hash that idempotency keys store: pinned, because a stored key
 * must keep matching its retry across releases (a changed hash would answer
 * a true retry with ALREADY_EXISTS).
 */
import { expect } from "chai";
import { requestHash } from "../src/domain/idempotency.js";

describe("request hash", () => {
  it("is the same hash releases before this one stored", () => {
    const request = {
      accountId: "a",
      operationType: "x",
      usage: { credits: 5n, tokensInput: 0n },
      metadata: { b: 1, a: [1, "ü", null, { z: true, y: undefined }] },
      idempotencyKey: "k",
      when: new Date(0),
      unset: undefined,
    };
    expect(requestHash("M", request)).to.equal("935bb90f02f16211182adc64f61dfaddbaef1de3f72caaeedfdd12d321bf9876");
    expect(requestHash("M", { é: 1, e: 2, Z: 3, 10: 4, 9: 5 }).slice(0, 16)).to.equal("254437db6cedca62");
    expect(requestHash("M", null).slice(0, 16)).to.equal("d96671d7e41d6af9");
  });

  it("does not depend on key order or on undefined members", () => {
    expect(requestHash("M", { a: 1, b: { c: 2, d: 3 } })).to.equal(requestHash("M", { b: { d: 3, c: 2, e: undefined }, a: 1 }));
    expect(requestHash("M", { a: 1 })).to.not.equal(requestHash("N", { a: 1 }));
  });
});
