/**
 * The one mapping from errors to Connect/gRPC status.
 *
 * Domain errors keep their kind and reason (ErrorInfo) and field violations
 * (BadRequest). A lost database is UNAVAILABLE. Anything else is logged with
 * its stack and answered INTERNAL without internals.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, BadRequest_FieldViolationSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { sqlState } from "./db/transaction.js";
import { BillingError, Reason, deadlineExceeded, type ErrorKind } from "./domain/errors.js";
import type { Logger } from "./logger.js";

export const ERROR_DOMAIN = "billing.v1";

type OutgoingDetails = NonNullable<ConstructorParameters<typeof ConnectError>[3]>;

const CODES: Record<ErrorKind, Code> = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  already_exists: Code.AlreadyExists,
  failed_precondition: Code.FailedPrecondition,
  resource_exhausted: Code.ResourceExhausted,
  permission_denied: Code.PermissionDenied,
  unauthenticated: Code.Unauthenticated,
  unavailable: Code.Unavailable,
  aborted: Code.Aborted,
  unimplemented: Code.Unimplemented,
  deadline_exceeded: Code.DeadlineExceeded,
};

/** Builds a ConnectError with ErrorInfo (and BadRequest when fields are named). */
export function connectErrorOf(err: BillingError): ConnectError {
  const details = [
    {
      desc: ErrorInfoSchema,
      value: create(ErrorInfoSchema, { reason: err.reason, domain: ERROR_DOMAIN, metadata: err.metadata }),
    },
  ] as OutgoingDetails;
  if (err.fieldViolations.length > 0) {
    details.push({
      desc: BadRequestSchema,
      value: create(BadRequestSchema, {
        fieldViolations: err.fieldViolations.map((v) => create(BadRequest_FieldViolationSchema, { field: v.field, description: v.description })),
      }),
    } as OutgoingDetails[number]);
  }
  return new ConnectError(err.message, CODES[err.kind], undefined, details, err);
}

/** Classifies any thrown value as a client-facing ConnectError; logs the unexpected. */
export function toConnectError(err: unknown, logger: Logger, procedure: string): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof BillingError) return connectErrorOf(err);
  // The caller went away mid-call (a cancelled stream): not a failure of ours, and not logged as one.
  const code = (err as { code?: unknown } | null)?.code;
  if (code === "ERR_STREAM_PREMATURE_CLOSE" || code === "ABORT_ERR" || (err instanceof Error && err.name === "AbortError")) {
    return new ConnectError("the caller cancelled the call", Code.Canceled, undefined, undefined, err);
  }
  const known = classifyDatabaseError(err);
  if (known) return connectErrorOf(known);
  logger.error("unexpected error", { procedure, error: err instanceof Error ? { name: err.name, message: err.message, stack: err.stack } : String(err) });
  return new ConnectError("internal error", Code.Internal, undefined, [
    { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason: Reason.Internal, domain: ERROR_DOMAIN }) },
  ] as OutgoingDetails, err);
}

const CONNECTION_ERROR_NAMES = new Set([
  "SequelizeConnectionError",
  "SequelizeConnectionRefusedError",
  "SequelizeConnectionAcquireTimeoutError",
  "SequelizeHostNotFoundError",
  "SequelizeHostNotReachableError",
  "SequelizeConnectionTimedOutError",
  "SequelizeAccessDeniedError",
]);
const CONNECTION_ERRNOS = new Set(["ECONNREFUSED", "ECONNRESET", "ENOENT", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENOTFOUND"]);

/** Database failures with a meaning for the caller; undefined for the unexpected. */
export function classifyDatabaseError(err: unknown): BillingError | undefined {
  const name = (err as { name?: unknown } | null)?.name;
  const state = sqlState(err);
  const message = String((err as { message?: unknown } | null)?.message ?? "");
  if (
    (typeof name === "string" && CONNECTION_ERROR_NAMES.has(name)) ||
    (state !== undefined && (CONNECTION_ERRNOS.has(state) || state.startsWith("08") || state === "57P01" || state === "57P02" || state === "57P03" || state === "53300")) ||
    /Connection terminated|connection is closed|Client has encountered a connection error|timeout exceeded when trying to connect/i.test(message)
  ) {
    return new BillingError("unavailable", Reason.DatabaseUnavailable, "the database is unavailable; retry later");
  }
  if (state === "57014") return deadlineExceeded();
  if (state === "40001" || state === "40P01") return new BillingError("aborted", Reason.Conflict, "the request conflicted with a concurrent one; retry it");
  if (state === "23505") return new BillingError("already_exists", Reason.AlreadyExists, "a record with the same unique key already exists");
  if (state === "22003") return new BillingError("invalid_argument", Reason.InvalidArgument, "a value is out of range");
  if (state === "22008") return new BillingError("invalid_argument", Reason.InvalidArgument, "a date or time is out of range");
  return undefined;
}
