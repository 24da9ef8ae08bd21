/**
 * DiagnosticsService: Echo answers its payload and does nothing else, so the
 * bench can tell what the transport and interceptors cost from what a
 * deduction adds.
 */
import { create } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import { DiagnosticsService, EchoResponseSchema } from "../../gen/billing/v1/diagnostics_service_pb.js";
import { invalidField } from "../domain/errors.js";

const MAX_PAYLOAD_BYTES = 1024;

export function createDiagnosticsServiceHandler(): ServiceImpl<typeof DiagnosticsService> {
  return {
    async echo(req) {
      if (Buffer.byteLength(req.payload, "utf8") > MAX_PAYLOAD_BYTES) throw invalidField("payload", `must be at most ${MAX_PAYLOAD_BYTES} bytes`);
      return create(EchoResponseSchema, { payload: req.payload });
    },
  };
}
