/**
 * Credit packages through the API: the catalogue in display order, admin
 * writes, effective price after discount.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { randomUUID } from "node:crypto";
import { CreditService } from "../../gen/billing/v1/credit_service_pb.js";
import { TOKENS, badFields, client, expectError } from "../harness.js";

const admin = () => client(CreditService, TOKENS.admin);
const slug = () => `pack-${randomUUID().slice(0, 8)}`;

describe("CreditService credit packages", () => {
  it("creates a package with its effective price, readable by every role", async () => {
    const s = slug();
    const res = await admin().createCreditPackage({
      creditPackage: { name: "Starter", slug: s, credits: 1000n, price: "19.99", discountPercentage: 15, isActive: true, isFeatured: true, features: ["priority queue"], sortOrder: 1 },
    });
    // 19.99 x 0.85 = 16.9915 -> 16.99
    expect(res.creditPackage).to.include({ slug: s, credits: 1000n, price: "19.99", discountPercentage: 15, effectivePrice: "16.99", currency: "USD", isActive: true });
    const got = await client(CreditService, TOKENS.accountA).getCreditPackage({ slug: s });
    expect(got.creditPackage?.features).to.deep.equal(["priority queue"]);
  });

  it("lists active packages by sort order then price; inactive ones for admins only", async () => {
    const tag = slug();
    await admin().createCreditPackage({ creditPackage: { name: "B", slug: `${tag}-b`, credits: 10n, price: "5.00", sortOrder: -100, isActive: true } });
    await admin().createCreditPackage({ creditPackage: { name: "A", slug: `${tag}-a`, credits: 10n, price: "3.00", sortOrder: -100, isActive: true } });
    await admin().createCreditPackage({ creditPackage: { name: "Off", slug: `${tag}-off`, credits: 10n, price: "1.00", sortOrder: -100, isActive: false } });
    const seen: string[] = [];
    let pageToken = "";
    do {
      const res = await client(CreditService, TOKENS.service).listCreditPackages({ pageSize: 1, pageToken });
      seen.push(...res.creditPackages.map((p) => p.slug));
      pageToken = res.nextPageToken;
    } while (pageToken);
    expect(seen.filter((s) => s.startsWith(tag))).to.deep.equal([`${tag}-a`, `${tag}-b`]);
    const all = await admin().listCreditPackages({ includeInactive: true, pageSize: 500 });
    expect(all.creditPackages.map((p) => p.slug)).to.include(`${tag}-off`);
    await expectError(client(CreditService, TOKENS.accountA).listCreditPackages({ includeInactive: true }), Code.InvalidArgument);
  });

  it("updates the masked fields", async () => {
    const s = slug();
    await admin().createCreditPackage({ creditPackage: { name: "Pro", slug: s, credits: 5000n, price: "79.00", isActive: true } });
    const res = await admin().updateCreditPackage({ creditPackage: { slug: s, price: "69.00", name: "ignored" }, updateMask: { paths: ["price"] } });
    expect(res.creditPackage).to.include({ price: "69.00", name: "Pro", effectivePrice: "69.00" });
    await expectError(admin().updateCreditPackage({ creditPackage: { slug: "no-such-pack", price: "1.00" }, updateMask: { paths: ["price"] } }), Code.NotFound);
  });

  it("rejects bad input, duplicates and non-admin writes", async () => {
    const err = await expectError(
      admin().createCreditPackage({ creditPackage: { name: "", slug: "Not A Slug", credits: 0n, price: "1.999", discountPercentage: 101, currency: "usd" } }),
      Code.InvalidArgument,
    );
    expect(badFields(err)).to.have.members([
      "credit_package.name",
      "credit_package.slug",
      "credit_package.credits",
      "credit_package.price",
      "credit_package.discount_percentage",
      "credit_package.currency",
    ]);
    const s = slug();
    await admin().createCreditPackage({ creditPackage: { name: "X", slug: s, credits: 1n, price: "1.00" } });
    await expectError(admin().createCreditPackage({ creditPackage: { name: "X", slug: s, credits: 1n, price: "1.00" } }), Code.AlreadyExists);
    await expectError(client(CreditService, TOKENS.service).createCreditPackage({ creditPackage: { name: "X", slug: slug(), credits: 1n, price: "1.00" } }), Code.PermissionDenied);
    await expectError(admin().getCreditPackage({ slug: "nope-nope" }), Code.NotFound);
  });
});
