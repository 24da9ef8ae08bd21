/**
 * The `metadata` (google.protobuf.Struct) input limits of README.md ("Calling it",
 * "Input limits"), on every protocol: at most 10 levels deep, at most 16 KiB as
 * JSON, every string valid UTF-8 without NUL, every number finite, and no
 * "__proto__" key. A refused metadata is INVALID_ARGUMENT naming a field that
 * starts with "metadata", and nothing is written (no ledger row, no balance
 * change, no idempotency record).
 */
import { create, toBinary, type JsonObject } from "@bufbuild/protobuf";
import { StructSchema, ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { CreditService, CreditTransactionType, GrantCreditsRequestSchema } from "../../gen/billing/v1/credit_service_pb.js";
import { PROTOCOLS, TOKENS, badFields, client, expectError, key, newAccount, type Protocol } from "../harness.js";
import { connectError, connectJson, describeH1, frame, grpcFields, grpcMessage, grpcStatus, h1, h2, splice } from "./raw.js";

const GRANT = "/billing.v1.CreditService/GrantCredits";
const ADJUSTMENT = CreditTransactionType.ADJUSTMENT;

const svc = (protocol: Protocol = "connect-json-http1") => client(CreditService, TOKENS.service, protocol);
const admin = () => client(CreditService, TOKENS.admin);

async function balanceOf(accountId: string): Promise<bigint> {
  return (await admin().getBalance({ accountId })).balance!.balance;
}

async function historyOf(accountId: string) {
  return (await admin().listTransactions({ accountId, pageSize: 500 })).transactions;
}

/** The account still has exactly `balance` and `rows` ledger entries. */
async function expectUnchanged(accountId: string, balance: bigint, rows: number) {
  expect(await balanceOf(accountId), "balance unchanged").to.equal(balance);
  expect(await historyOf(accountId), "no ledger row written").to.have.length(rows);
}

function expectMetadataField(fields: string[]) {
  expect(fields.some((f) => f.startsWith("metadata")), `BadRequest fields ${JSON.stringify(fields)} name metadata`).to.equal(true);
}

/** {"a":{"a":...{"a":"leaf"}}}, `levels` objects deep (the outermost object is level 1). */
function nested(levels: number): JsonObject {
  let v: JsonObject = { a: "leaf" };
  for (let i = 1; i < levels; i++) v = { a: v };
  return v;
}

/** A metadata whose JSON.stringify is exactly `bytes` bytes long. */
function sized(bytes: number): JsonObject {
  return { x: "m".repeat(bytes - '{"x":""}'.length) };
}

/** A GrantCreditsRequest in binary with `structBytes` as its metadata (field 5). */
function grantWithRawStruct(accountId: string, idempotencyKey: string, structBytes: Uint8Array): Buffer {
  const rest = toBinary(GrantCreditsRequestSchema, create(GrantCreditsRequestSchema, { accountId, amount: 5n, type: ADJUSTMENT, idempotencyKey }));
  return Buffer.concat([Buffer.from(rest), Buffer.from([0x2a]), varint(structBytes.length), Buffer.from(structBytes)]);
}

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

function numberStruct(n: number): Uint8Array {
  const value: Value = create(ValueSchema, { kind: { case: "numberValue", value: n } });
  return toBinary(StructSchema, create(StructSchema, { fields: { x: value } }));
}

/** A Connect JSON GrantCredits body with `metadataText` spliced in verbatim. */
function grantJsonText(accountId: string, idempotencyKey: string, metadataText: string, amount = "5"): string {
  return `{"accountId":${JSON.stringify(accountId)},"amount":"${amount}","type":"CREDIT_TRANSACTION_TYPE_ADJUSTMENT","idempotencyKey":${JSON.stringify(idempotencyKey)},"metadata":${metadataText}}`;
}

describe("hostile input: metadata (google.protobuf.Struct) limits", () => {
  describe("NUL and lone surrogates", () => {
    for (const protocol of PROTOCOLS) {
      it(`refuses NUL in a metadata value naming the field, and writes nothing (GrantCredits, ${protocol})`, async () => {
        const account = newAccount("nulval");
        const err = await expectError(svc(protocol).grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata: { x: "a\u0000b" }, idempotencyKey: key() }), Code.InvalidArgument);
        expectMetadataField(badFields(err));
        await expectUnchanged(account, 0n, 0);
      });

      it(`refuses NUL in a metadata key naming the field, and writes nothing (GrantCredits, ${protocol})`, async () => {
        const account = newAccount("nulkey");
        const err = await expectError(svc(protocol).grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata: { "a\u0000b": 1 }, idempotencyKey: key() }), Code.InvalidArgument);
        expectMetadataField(badFields(err));
        await expectUnchanged(account, 0n, 0);
      });

      it(`refuses NUL in a metadata value or key of DeductCredits, and charges nothing (${protocol})`, async () => {
        const account = newAccount("nuldeduct");
        await admin().grantCredits({ accountId: account, amount: 20n, type: ADJUSTMENT, idempotencyKey: key() });
        for (const metadata of [{ x: "a\u0000b" }, { "k\u0000": "v" }, { deep: { list: ["ok", "bad\u0000"] } }] as JsonObject[]) {
          const err = await expectError(
            svc(protocol).deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 3n }, metadata, idempotencyKey: key() }),
            Code.InvalidArgument,
          );
          expectMetadataField(badFields(err));
        }
        await expectUnchanged(account, 20n, 1);
      });
    }

    // A lone surrogate only survives JSON (as the escape "\ud800"); the binary
    // clients would encode it as U+FFFD, so binary is covered below with raw
    // invalid UTF-8 bytes instead.
    it("refuses a lone surrogate in a metadata value or key naming the field, and writes nothing (connect-json-http1)", async () => {
      const account = newAccount("surrogate");
      for (const metadata of [{ x: "a\ud800b" }, { "k\ud800": "v" }, { x: "\udc00" }, { nested: { "\udbff": 1 } }] as JsonObject[]) {
        const err = await expectError(svc().grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata, idempotencyKey: key() }), Code.InvalidArgument);
        expectMetadataField(badFields(err));
        const deduct = await expectError(
          svc().deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 1n }, metadata, idempotencyKey: key() }),
          Code.InvalidArgument,
        );
        expectMetadataField(badFields(deduct));
      }
      await expectUnchanged(account, 0n, 0);
    });

    it("refuses a lone surrogate sent as a raw \\ud800 escape in Connect JSON text, and writes nothing", async () => {
      const account = newAccount("surrogateraw");
      for (const text of ['{"x":"\\ud800"}', '{"\\ud800":"v"}']) {
        const a = await connectJson(GRANT, grantJsonText(account, key(), text), TOKENS.admin);
        expect(a.status, describeH1(a)).to.equal(400);
        const e = connectError(a);
        expect(e.code).to.equal("invalid_argument");
        expectMetadataField(e.fields);
      }
      await expectUnchanged(account, 0n, 0);
    });

    it("refuses invalid UTF-8 (an encoded surrogate, ED A0 80) in a binary metadata value or key, and writes nothing (gRPC and Connect binary)", async () => {
      const account = newAccount("badutf8");
      const placeholder = Buffer.from([1, 2, 3]);
      const surrogate = Buffer.from([0xed, 0xa0, 0x80]);
      for (const metadata of [{ x: "\u0001\u0002\u0003" }, { "\u0001\u0002\u0003": "v" }]) {
        const structBytes = toBinary(StructSchema, create(StructSchema, { fields: Object.fromEntries(Object.entries(metadata).map(([k, v]) => [k, create(ValueSchema, { kind: { case: "stringValue", value: v } })])) }));
        const body = splice(grantWithRawStruct(account, key(), structBytes), placeholder, surrogate);
        const g = await h2(GRANT, frame(body), { authorization: `Bearer ${TOKENS.admin}` });
        expect(grpcStatus(g), grpcMessage(g)).to.equal(3);
        const c = await h1(GRANT, splice(grantWithRawStruct(account, key(), structBytes), placeholder, surrogate), {
          "content-type": "application/proto",
          authorization: `Bearer ${TOKENS.admin}`,
        });
        expect(c.status, describeH1(c)).to.equal(400);
        expect(connectError(c).code).to.equal("invalid_argument");
      }
      await expectUnchanged(account, 0n, 0);
    });

    it("refuses exactly the one of 25 concurrent deductions whose metadata holds NUL; the 24 others succeed and every ledger adds up", async function () {
      this.timeout(60_000);
      const accounts = Array.from({ length: 25 }, () => newAccount("nulrace"));
      await Promise.all(accounts.map((accountId) => admin().grantCredits({ accountId, amount: 10n, type: ADJUSTMENT, idempotencyKey: key() })));
      const bad = 12;
      const results = await Promise.allSettled(
        accounts.map((accountId, i) =>
          svc(PROTOCOLS[i % PROTOCOLS.length]).deductCredits({
            accountId,
            operationType: "clustering",
            usage: { credits: 3n },
            metadata: i === bad ? { x: "a\u0000b" } : { x: `ok-${i}`, i },
            idempotencyKey: key(),
          }),
        ),
      );
      for (const [i, r] of results.entries()) {
        if (i === bad) {
          expect(r.status, "the NUL deduction is refused").to.equal("rejected");
          const err = await expectError(Promise.reject((r as PromiseRejectedResult).reason), Code.InvalidArgument);
          expectMetadataField(badFields(err));
        } else {
          expect(r.status, `deduction ${i}: ${r.status === "rejected" ? String((r as PromiseRejectedResult).reason) : ""}`).to.equal("fulfilled");
        }
      }
      for (const [i, accountId] of accounts.entries()) {
        const rows = await historyOf(accountId);
        const sum = rows.reduce((s, t) => s + t.amount, 0n);
        const balance = await balanceOf(accountId);
        expect(balance, `balance of ${accountId} = sum of its transactions`).to.equal(sum);
        expect(balance).to.equal(i === bad ? 10n : 7n);
        expect(rows).to.have.length(i === bad ? 1 : 2);
      }
    });
  });

  describe("non-finite numbers", () => {
    it("refuses 1e400 in Connect JSON metadata with 400 invalid_argument, stores nothing, and a retry with the same key and valid metadata succeeds", async () => {
      const account = newAccount("inf");
      const idem = key();
      for (const text of ['{"x":1e400}', '{"x":-1e400}', '{"nested":{"list":[1,2,1e999]}}']) {
        const a = await connectJson(GRANT, grantJsonText(account, idem, text), TOKENS.admin);
        expect(a.status, describeH1(a)).to.equal(400);
        const e = connectError(a);
        expect(e.code, describeH1(a)).to.equal("invalid_argument");
        expectMetadataField(e.fields);
      }
      await expectUnchanged(account, 0n, 0);
      const ok = await connectJson(GRANT, grantJsonText(account, idem, '{"x":1}'), TOKENS.admin);
      expect(ok.status, describeH1(ok)).to.equal(200);
      expect(JSON.parse(ok.body.toString()).balance.balance).to.equal("5");
      await expectUnchanged(account, 5n, 1);
    });

    for (const n of [NaN, Infinity, -Infinity]) {
      it(`refuses a Struct number_value of ${n} over raw gRPC binary, and writes nothing`, async () => {
        const account = newAccount("nan");
        const a = await h2(GRANT, frame(grantWithRawStruct(account, key(), numberStruct(n))), { authorization: `Bearer ${TOKENS.admin}` });
        expect(grpcStatus(a), grpcMessage(a)).to.equal(3);
        expectMetadataField(grpcFields(a));
        await expectUnchanged(account, 0n, 0);
      });
    }

    for (const protocol of PROTOCOLS.filter((p) => p !== "connect-json-http1")) {
      it(`refuses NaN and Infinity metadata numbers from the generated client, and writes nothing (${protocol})`, async () => {
        const account = newAccount("nanclient");
        for (const x of [NaN, Infinity, -Infinity]) {
          const err = await expectError(svc(protocol).grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata: { x }, idempotencyKey: key() }), Code.InvalidArgument);
          expectMetadataField(badFields(err));
        }
        await expectUnchanged(account, 0n, 0);
      });
    }
  });

  describe("depth and size", () => {
    for (const protocol of PROTOCOLS) {
      it(`accepts metadata nested 10 levels deep and keeps it as sent (${protocol})`, async () => {
        const account = newAccount("depth10");
        const res = await svc(protocol).grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata: nested(10), idempotencyKey: key() });
        expect(res.transaction?.metadata).to.deep.equal(nested(10));
        await expectUnchanged(account, 5n, 1);
      });

      it(`refuses metadata nested 11 and 40 levels deep naming the field, and writes nothing (${protocol})`, async () => {
        const account = newAccount("depth11");
        for (const levels of [11, 40]) {
          const err = await expectError(svc(protocol).grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata: nested(levels), idempotencyKey: key() }), Code.InvalidArgument);
          expectMetadataField(badFields(err));
        }
        await expectUnchanged(account, 0n, 0);
      });

      it(`refuses metadata over 16 KiB as JSON and accepts it at and just under 16 KiB (${protocol})`, async () => {
        const account = newAccount("size");
        for (const bytes of [16385, 20000]) {
          expect(JSON.stringify(sized(bytes)).length).to.equal(bytes);
          const err = await expectError(svc(protocol).grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata: sized(bytes), idempotencyKey: key() }), Code.InvalidArgument);
          expectMetadataField(badFields(err));
        }
        await expectUnchanged(account, 0n, 0);
        for (const bytes of [16383, 16384]) {
          const res = await svc(protocol).grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata: sized(bytes), idempotencyKey: key() });
          expect(JSON.stringify(res.transaction?.metadata)).to.have.length(bytes);
        }
        await expectUnchanged(account, 10n, 2);
      });
    }

    it("refuses metadata that is over 16 KiB only because of many small keys, and writes nothing", async () => {
      const account = newAccount("sizekeys");
      const metadata: JsonObject = {};
      for (let i = 0; i < 2000; i++) metadata[`k${i}`] = i;
      expect(JSON.stringify(metadata).length).to.be.greaterThan(16384);
      const err = await expectError(svc().grantCredits({ accountId: account, amount: 5n, type: ADJUSTMENT, metadata, idempotencyKey: key() }), Code.InvalidArgument);
      expectMetadataField(badFields(err));
      await expectUnchanged(account, 0n, 0);
    });
  });

  describe('"__proto__" keys', () => {
    it('refuses a "__proto__" metadata key in Connect JSON naming the field (never silently dropped), and writes nothing', async () => {
      const account = newAccount("proto");
      for (const text of ['{"__proto__":{"polluted":true}}', '{"__proto__":"x"}', '{"ok":1,"a":{"__proto__":{"b":1}}}', '{"list":[{"__proto__":null}]}']) {
        const a = await connectJson(GRANT, grantJsonText(account, key(), text), TOKENS.admin);
        expect(a.status, `${text}: ${describeH1(a)}`).to.equal(400);
        const e = connectError(a);
        expect(e.code).to.equal("invalid_argument");
        expectMetadataField(e.fields);
      }
      expect(({} as Record<string, unknown>).polluted, "Object.prototype untouched").to.equal(undefined);
      await expectUnchanged(account, 0n, 0);
    });

    it('refuses a "__proto__" metadata key over gRPC binary too, and writes nothing', async () => {
      const account = newAccount("protobin");
      const structBytes = toBinary(StructSchema, create(StructSchema, { fields: { __prot0__: create(ValueSchema, { kind: { case: "stringValue", value: "x" } }) } }));
      const body = splice(grantWithRawStruct(account, key(), structBytes), Buffer.from("__prot0__"), Buffer.from("__proto__"));
      const a = await h2(GRANT, frame(body), { authorization: `Bearer ${TOKENS.admin}` });
      expect(grpcStatus(a), grpcMessage(a)).to.equal(3);
      expectMetadataField(grpcFields(a));
      await expectUnchanged(account, 0n, 0);
    });
  });

  describe("nothing commits behind an error", () => {
    for (const protocol of PROTOCOLS) {
      it(`leaves the balance, the ledger and the idempotency key untouched whenever a metadata is refused (${protocol})`, async () => {
        const account = newAccount("nocommit");
        await admin().grantCredits({ accountId: account, amount: 50n, type: ADJUSTMENT, idempotencyKey: key() });
        const refused: JsonObject[] = [{ x: "a\u0000b" }, { "\u0000": 1 }, nested(11), nested(40), sized(16385)];
        if (protocol === "connect-json-http1") refused.push({ x: "\ud800" });
        else refused.push({ x: NaN }, { x: Infinity });
        const idem = key();
        for (const metadata of refused) {
          const err = await expectError(svc(protocol).grantCredits({ accountId: account, amount: 7n, type: ADJUSTMENT, metadata, idempotencyKey: idem }), Code.InvalidArgument);
          expectMetadataField(badFields(err));
          const deduct = await expectError(
            svc(protocol).deductCredits({ accountId: account, operationType: "clustering", usage: { credits: 7n }, metadata, idempotencyKey: key() }),
            Code.InvalidArgument,
          );
          expectMetadataField(badFields(deduct));
        }
        await expectUnchanged(account, 50n, 1);
        // The refused requests stored nothing under their key: the same key now works once.
        const ok = await svc(protocol).grantCredits({ accountId: account, amount: 7n, type: ADJUSTMENT, metadata: { fine: true }, idempotencyKey: idem });
        expect(ok.balance?.balance).to.equal(57n);
        await expectUnchanged(account, 57n, 2);
      });
    }
  });
});
