/**
 * The catalogue of domain errors. Domain code throws these; `src/errors.ts`
 * maps them to Connect codes with ErrorInfo and BadRequest details. Nothing
 * here knows about the transport.
 */
export type ErrorKind =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "failed_precondition"
  | "resource_exhausted"
  | "permission_denied"
  | "unauthenticated"
  | "unavailable"
  | "aborted"
  | "unimplemented"
  | "deadline_exceeded";

/** One offending request field, named by its proto path (e.g. "usage.credits"). */
export interface FieldViolation {
  field: string;
  description: string;
}

/** Stable reasons callers can switch on (ErrorInfo.reason). */
export const Reason = {
  InvalidArgument: "INVALID_ARGUMENT",
  NotFound: "NOT_FOUND",
  AlreadyExists: "ALREADY_EXISTS",
  InsufficientCredits: "INSUFFICIENT_CREDITS",
  InvalidStateTransition: "INVALID_STATE_TRANSITION",
  LimitExceeded: "LIMIT_EXCEEDED",
  NoPlanLimit: "NO_PLAN_LIMIT",
  PackageInactive: "PACKAGE_INACTIVE",
  PaymentPending: "PAYMENT_PENDING",
  AmountMismatch: "AMOUNT_MISMATCH",
  SecretKeyMissing: "SECRET_KEY_MISSING",
  PeriodOverlap: "PERIOD_OVERLAP",
  IdempotencyKeyReused: "IDEMPOTENCY_KEY_REUSED",
  CreditsAlreadySpent: "CREDITS_ALREADY_SPENT",
  OperationInactive: "OPERATION_INACTIVE",
  PriceMissing: "PRICE_MISSING",
  WrongModelType: "WRONG_MODEL_TYPE",
  ModelInactive: "MODEL_INACTIVE",
  ModelIsDefault: "MODEL_IS_DEFAULT",
  Unauthenticated: "UNAUTHENTICATED",
  PermissionDenied: "PERMISSION_DENIED",
  DatabaseUnavailable: "DATABASE_UNAVAILABLE",
  Conflict: "CONFLICT",
  NotImplemented: "NOT_IMPLEMENTED",
  DeadlineExceeded: "DEADLINE_EXCEEDED",
  Draining: "DRAINING",
  PaymentMethodRequired: "PAYMENT_METHOD_REQUIRED",
  /** Only src/errors.ts answers this, for unexpected failures. */
  Internal: "INTERNAL",
} as const;

/** A failure the caller can act on; never carries internals. */
export class BillingError extends Error {
  constructor(
    readonly kind: ErrorKind,
    readonly reason: string,
    message: string,
    readonly fieldViolations: FieldViolation[] = [],
    readonly metadata: Record<string, string> = {},
  ) {
    super(message);
    this.name = "BillingError";
  }
}

/** Bad input in one or more fields. */
export function invalidArgument(violations: FieldViolation[] | FieldViolation): BillingError {
  const list = Array.isArray(violations) ? violations : [violations];
  const message = list.map((v) => `${v.field}: ${v.description}`).join("; ");
  return new BillingError("invalid_argument", Reason.InvalidArgument, message, list);
}

/** Shorthand for a single bad field. */
export function invalidField(field: string, description: string): BillingError {
  return invalidArgument({ field, description });
}

/** A named resource that does not exist. */
export function notFound(what: string, id: string): BillingError {
  return new BillingError("not_found", Reason.NotFound, `${what} ${JSON.stringify(id)} not found`, [], { resource: what, id });
}

/** The request cannot be carried out in the resource's current state. */
export function failedPrecondition(reason: string, message: string, metadata: Record<string, string> = {}): BillingError {
  return new BillingError("failed_precondition", reason, message, [], metadata);
}

/** Collects field violations so that every bad field is reported at once. */
export class Violations {
  private readonly list: FieldViolation[] = [];
  add(field: string, description: string): void {
    this.list.push({ field, description });
  }
  /** Runs `check`, recording a BillingError's violations instead of throwing. */
  collect<T>(check: () => T): T | undefined {
    try {
      return check();
    } catch (err) {
      if (err instanceof BillingError && err.kind === "invalid_argument") {
        this.list.push(...err.fieldViolations);
        return undefined;
      }
      throw err;
    }
  }
  /** collect, for an asynchronous check. */
  async collectAsync<T>(check: () => Promise<T>): Promise<T | undefined> {
    try {
      return await check();
    } catch (err) {
      if (err instanceof BillingError && err.kind === "invalid_argument") {
        this.list.push(...err.fieldViolations);
        return undefined;
      }
      throw err;
    }
  }
  /** Throws INVALID_ARGUMENT naming every recorded field, if any. */
  throwIfAny(): void {
    if (this.list.length > 0) throw invalidArgument(this.list);
  }
}

/** DEADLINE_EXCEEDED: the caller's deadline passed before the work was done (nothing was written). */
export function deadlineExceeded(): BillingError {
  return new BillingError("deadline_exceeded", Reason.DeadlineExceeded, "the request ran out of time");
}

/** FAILED_PRECONDITION / INSUFFICIENT_CREDITS: a debit of `required` credits does not fit the available credits. */
export function insufficientCredits(accountId: string, required: bigint, available: bigint): BillingError {
  const shown = available < 0n ? 0n : available;
  return new BillingError("failed_precondition", Reason.InsufficientCredits, `insufficient credits: ${required} required, ${shown} available`, [], {
    required: required.toString(),
    available: shown.toString(),
    account_id: accountId,
  });
}

/** ALREADY_EXISTS / IDEMPOTENCY_KEY_REUSED: the key was used for a different request. */
export function idempotencyKeyReused(key: string): BillingError {
  return new BillingError("already_exists", Reason.IdempotencyKeyReused, "idempotency_key was already used for a different request", [], { idempotency_key: key });
}
