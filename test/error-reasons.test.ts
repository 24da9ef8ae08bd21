/**
 * The contract's error reasons (billing.v1.ErrorReason) and the reasons the
 * code can raise (src/domain/errors.ts `Reason`) are the same set: a reason
 * added to the code without the enum, or the reverse, fails here.
 */
import { expect } from "chai";
import { ErrorReasonSchema } from "../gen/billing/v1/common_pb.js";
import { Reason } from "../src/domain/errors.js";

describe("error reasons", () => {
  it("are exactly the ErrorReason enum's values, without the ERROR_REASON_ prefix", () => {
    const documented = ErrorReasonSchema.values.filter((v) => v.number !== 0).map((v) => v.name.replace(/^ERROR_REASON_/, ""));
    const raised = Object.values(Reason);
    expect([...raised].sort()).to.deep.equal([...documented].sort());
  });
});
