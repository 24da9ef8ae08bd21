/**
 * grpc.health.v1.Health: SERVING while the database answers, NOT_SERVING
 * while it does not. Service names: "" (the whole server) and each
 * billing.v1 service; others are NOT_FOUND.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { Health, HealthCheckResponseSchema, HealthCheckResponse_ServingStatus, HealthListResponseSchema, type HealthCheckRequest } from "../../gen/health/v1/health_pb.js";

export const HEALTH_SERVICES = ["", "billing.v1.CreditService", "billing.v1.InvoiceService", "billing.v1.PaymentService", "billing.v1.ModelConfigService"];

/** Creates the health service; `isUp` says whether the database answers. */
export function createHealthHandler(isUp: () => Promise<boolean>, watchIntervalMs = 1_000): ServiceImpl<typeof Health> {
  const status = async (service: string) => {
    if (!HEALTH_SERVICES.includes(service)) throw new ConnectError(`unknown service ${JSON.stringify(service)}`, Code.NotFound);
    return (await isUp()) ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING;
  };
  return {
    async check(req: HealthCheckRequest) {
      return create(HealthCheckResponseSchema, { status: await status(req.service) });
    },
    async list() {
      const up = await isUp();
      const s = up ? HealthCheckResponse_ServingStatus.SERVING : HealthCheckResponse_ServingStatus.NOT_SERVING;
      return create(HealthListResponseSchema, {
        statuses: Object.fromEntries(HEALTH_SERVICES.map((name) => [name, create(HealthCheckResponseSchema, { status: s })])),
      });
    },
    async *watch(req: HealthCheckRequest, ctx: HandlerContext) {
      if (!HEALTH_SERVICES.includes(req.service)) {
        yield create(HealthCheckResponseSchema, { status: HealthCheckResponse_ServingStatus.SERVICE_UNKNOWN });
        return;
      }
      let last: HealthCheckResponse_ServingStatus | undefined;
      while (!ctx.signal.aborted) {
        const now = await status(req.service);
        if (now !== last) {
          last = now;
          yield create(HealthCheckResponseSchema, { status: now });
        }
        await new Promise<void>((resolve) => {
          const onAbort = () => (clearTimeout(timer), resolve());
          const timer = setTimeout(() => (ctx.signal.removeEventListener("abort", onAbort), resolve()), watchIntervalMs);
          ctx.signal.addEventListener("abort", onAbort, { once: true });
        });
      }
      // The server is shutting down (or the caller left): say so, then end the stream as UNAVAILABLE.
      if (last !== HealthCheckResponse_ServingStatus.NOT_SERVING) yield create(HealthCheckResponseSchema, { status: HealthCheckResponse_ServingStatus.NOT_SERVING });
      throw new ConnectError("the server is shutting down", Code.Unavailable);
    },
  };
}
