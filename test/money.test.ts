/**
 * The money helper: strict wire decimals, exact arithmetic, full-scale output.
 */
import { expect } from "chai";
import { AMOUNT, Dec, PRICE, formatMoney, parseMoney } from "../src/domain/money.js";
import { BillingError } from "../src/domain/errors.js";

function rejects(value: string, column = AMOUNT, opts = {}): BillingError {
  try {
    parseMoney(value, "amount", column, opts);
  } catch (e) {
    expect(e).to.be.instanceOf(BillingError);
    expect((e as BillingError).fieldViolations[0]?.field).to.equal("amount");
    return e as BillingError;
  }
  throw new Error(`accepted ${value}`);
}

describe("money", () => {
  it("parses plain decimals up to the column's scale", () => {
    expect(parseMoney("12.50", "amount", AMOUNT).toFixed(2)).to.equal("12.50");
    expect(parseMoney("12", "amount", AMOUNT).toFixed(2)).to.equal("12.00");
    expect(parseMoney("0.0042", "cost", PRICE).toFixed(4)).to.equal("0.0042");
    expect(parseMoney("99999999.99", "amount", AMOUNT).toFixed(2)).to.equal("99999999.99");
  });

  it("rejects exponents, NaN, separators, signs and empty input", () => {
    for (const bad of ["1e3", "NaN", "Infinity", "1,000.00", "+1.00", " 1.00", "1.", ".5", "", "0x10", "1_000"]) rejects(bad);
  });

  it("rejects more decimals than the column holds instead of rounding", () => {
    expect(rejects("1.005").message).to.match(/decimal places/);
    rejects("0.00001", PRICE);
  });

  it("rejects values beyond the column's precision", () => {
    expect(rejects("100000000.00").message).to.match(/less than/);
    rejects("1000000", PRICE);
  });

  it("rejects negatives unless allowed", () => {
    rejects("-1.00");
    expect(parseMoney("-1.00", "amount", AMOUNT, { allowNegative: true }).toFixed(2)).to.equal("-1.00");
  });

  it("enforces positive and minimum values", () => {
    rejects("0.00", AMOUNT, { positive: true });
    rejects("0.0000", PRICE, { min: "0.0001" });
  });

  it("computes exactly where floating point would not", () => {
    expect(0.1 + 0.2).to.not.equal(0.3);
    expect(new Dec("0.1").plus("0.2").toFixed(2)).to.equal("0.30");
    expect(formatMoney(new Dec("1.005"), AMOUNT)).to.equal("1.01");
    expect(formatMoney("10", AMOUNT)).to.equal("10.00");
    expect(formatMoney(new Dec("1e-7"), PRICE)).to.equal("0.0000");
    expect(formatMoney(new Dec("123456789012345678901234"), AMOUNT)).to.equal("123456789012345678901234.00");
  });
});
