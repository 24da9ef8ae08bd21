/**
 * DiagnosticsService.Echo: the payload back, on every protocol, through the
 * same interceptors as every RPC (auth, request ids), and nothing else.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { DiagnosticsService } from "../gen/billing/v1/diagnostics_service_pb.js";
import { PROTOCOLS, TOKENS, badFields, client, expectError } from "./harness.js";

describe("DiagnosticsService.Echo", () => {
  for (const protocol of PROTOCOLS) {
    it(`answers the payload unchanged (${protocol})`, async () => {
      const res = await client(DiagnosticsService, TOKENS.service, protocol).echo({ payload: "héllo ✓" });
      expect(res.payload).to.equal("héllo ✓");
    });
  }

  it("keeps to service and admin keys, and refuses a payload over 1024 bytes naming it", async () => {
    await expectError(client(DiagnosticsService, undefined).echo({ payload: "x" }), Code.Unauthenticated);
    await expectError(client(DiagnosticsService, TOKENS.accountA).echo({ payload: "x" }), Code.PermissionDenied);
    expect((await client(DiagnosticsService, TOKENS.admin).echo({ payload: "x".repeat(1024) })).payload).to.have.length(1024);
    const err = await expectError(client(DiagnosticsService, TOKENS.admin).echo({ payload: "x".repeat(1025) }), Code.InvalidArgument);
    expect(badFields(err)).to.deep.equal(["payload"]);
  });
});
