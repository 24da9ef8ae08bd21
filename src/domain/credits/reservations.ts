/**
 * Reservations: credits held before an AI call (image models are priced
 * before the call), settled with the actual usage afterwards (text models are
 * priced after the call).
 *
 * Rules:
 * - Holding needs that many available credits (balance - open holds -
 *   credits of lots not yet effective);
 *   the account row lock orders holds and charges, so racing reservations
 *   never hold more than the balance.
 * - An open hold stops counting when it expires, without anyone calling.
 * - Commit charges the actual usage; the hold is released in the same
 *   transaction, so the charge may use the held credits plus whatever else
 *   is available. Committing more than was held succeeds only if the extra
 *   is available.
 * - A hold is a number of credits, not particular lots: when lots expire
 *   (or are voided) under an open hold, the hold stays, and its commit draws
 *   from whatever lots are left, in burn-down order; if too few are left the
 *   commit fails with INSUFFICIENT_CREDITS and the hold stays open.
 * - Release frees the hold; releasing twice answers the released hold.
 *   Committed, released and expired holds cannot be committed.
 * - Price lock: a reservation records the operation's cost config version
 *   in force at its arrival (priced_at), and its commit prices the actual
 *   usage with that version and with the model prices in force at priced_at
 *   (among the model price versions added by the reservation's creation, so
 *   a later backdated version does not reach it), even if a new version
 *   took effect in between. With price_at_commit the commit prices with the
 *   versions in force at its own arrival instead. Reservations made before
 *   price versions existed price at the commit.
 */
import type { Sequelize, Transaction } from "sequelize";
import { lockAccount } from "../../db/credits/accounts.js";
import {
  expireDueReservations,
  findReservation,
  insertReservation,
  lockReservation,
  settleReservation,
  type ReservationRow as Row,
} from "../../db/credits/reservations.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Violations, failedPrecondition, insufficientCredits, notFound, Reason } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import type { JsonObject } from "../json.js";
import { stateMachine } from "../state-machine.js";
import { checkMetadata, checkText, requireId, requireIdempotencyKey, requireUuid } from "../validation.js";
import { describeUsage, usageRecordOf, type CreditLedger } from "./ledger.js";
import { normalizeOperationType } from "./operations.js";
import { Pricing } from "./pricing.js";
import type { BalanceView, LedgerEntry, UsageInput, UsageLogEntry } from "./types.js";

export type ReservationStatus = "active" | "committed" | "released" | "expired";
type ReservationAction = "commit" | "release" | "expire";

/**
 * A hold's life: only an ACTIVE hold (not yet past expires_at) is committed
 * or released; one past expires_at expires (when released, or by the
 * sweeper). Releasing a released or expired hold answers it as it is.
 */
const RESERVATIONS = stateMachine<ReservationStatus, ReservationAction>("a reservation", {
  commit: { from: ["active"], to: "committed" },
  release: { from: ["active"], to: "released" },
  expire: { from: ["active"], to: "expired" },
});

/**
 * FAILED_PRECONDITION / INVALID_STATE_TRANSITION unless `action` may start
 * from the hold's status (`reservation <id> is <status> and cannot be <done>`, metadata {status}).
 */
function checkTransition(id: string, status: ReservationStatus, action: "commit" | "release"): void {
  if (RESERVATIONS.can(status, action)) return;
  throw failedPrecondition(Reason.InvalidStateTransition, `reservation ${id} is ${status} and cannot be ${action === "commit" ? "committed" : "released"}`, { status });
}

export interface ReservationView {
  id: string;
  accountId: string;
  operationType: string;
  credits: bigint;
  status: ReservationStatus;
  creditsCommitted: bigint;
  expiresAt: Date;
  createdAt: Date;
  settledAt?: Date;
  /** The cost config version its commit prices with ("" for reservations older than price versions). */
  costConfigVersionId: string;
  /** The instant whose model prices its commit uses. */
  pricedAt?: Date;
}

const DEFAULT_TTL_SECONDS = 15 * 60;
const MAX_TTL_SECONDS = 24 * 60 * 60;

export interface ReserveInput {
  accountId: string;
  operationType: string;
  credits: bigint;
  /** Seconds; undefined for the default. */
  ttlSeconds: number | undefined;
  idempotencyKey: string;
}

export interface CommitInput {
  reservationId: string;
  usage: UsageInput | undefined;
  idempotencyKey: string;
  relatedObjectType: string;
  relatedObjectId: string;
  metadata: JsonObject;
  /** Price with the versions in force at the commit instead of the reservation's. */
  priceAtCommit?: boolean;
}

/** The reservation service. */
export class Reservations {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly ledger: CreditLedger,
    private readonly pricing: Pricing,
  ) {}

  /** Holds credits; idempotent by key. */
  async reserve(input: ReserveInput, options: TransactionOptions = {}): Promise<{ reservation: ReservationView; balance: BalanceView }> {
    const arrival = new Date();
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const operationType = v.collect(() => normalizeOperationType(input.operationType));
    if (input.credits <= 0n) v.add("credits", "must be greater than zero");
    if (input.ttlSeconds !== undefined && (!(input.ttlSeconds > 0) || input.ttlSeconds > MAX_TTL_SECONDS)) v.add("ttl", `must be positive and at most ${MAX_TTL_SECONDS} seconds`);
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    await this.pricing.checkOperation(v, operationType);
    v.throwIfAny();
    await this.pricing.requireActiveOperation(operationType!);
    const costVersionId = await this.pricing.costVersionAt(operationType!, arrival);
    const ttl = input.ttlSeconds ?? DEFAULT_TTL_SECONDS;
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: input.accountId, key: input.idempotencyKey, method: "ReserveCredits", request: { ...input, operationType } }, async () => {
          const state = await this.ledger.accountStateIn(t, input.accountId);
          if (state.available < input.credits) {
            throw insufficientCredits(input.accountId, input.credits, state.available);
          }
          const row = await insertReservation(this.sequelize, t, {
            accountId: input.accountId,
            operationType: operationType!,
            credits: input.credits,
            ttlSeconds: ttl,
            costVersionId: costVersionId || null,
            pricedAt: arrival,
          });
          this.ledger.changedOnCommit(t, input.accountId);
          const held = state.reserved + input.credits;
          return { reservation: view(row), balance: { ...state, reserved: held, available: state.available - input.credits } };
        });
        return result;
      },
      options,
    );
  }

  /** Settles a hold with the actual usage; idempotent by key. */
  async commit(
    input: CommitInput,
    options: TransactionOptions = {},
  ): Promise<{ reservation: ReservationView; transaction: LedgerEntry; usageLog: UsageLogEntry; balance: BalanceView }> {
    const v = new Violations();
    const id = v.collect(() => requireUuid(input.reservationId, "reservation_id"));
    Pricing.checkUsage(v, input.usage);
    v.collect(() => checkText(input.relatedObjectType, "related_object_type"));
    v.collect(() => checkText(input.relatedObjectId, "related_object_id"));
    v.collect(() => checkMetadata(input.metadata));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    const found = await this.find(id!);
    const locked = !input.priceAtCommit && found.priced_at !== null;
    const price = await this.pricing.price(
      normalizeOperationType(found.operation_type),
      input.usage!,
      "usage",
      locked ? { at: found.priced_at!, costConfigVersionId: found.cost_config_version_id, modelKnownAt: found.created_at } : {},
    );
    // price_at_commit joins the hashed request only when set, so keys stored before it existed still replay.
    const { priceAtCommit, ...hashed } = input;
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: found.account_id, key: input.idempotencyKey, method: "CommitReservation", request: priceAtCommit ? input : hashed }, async () => {
          // Account lock first (the ledger's order), then the reservation.
          await lockAccount(this.sequelize, t, found.account_id);
          const r = await this.lock(t, found.account_id, id!);
          const status = statusOf(r);
          checkTransition(id!, status, "commit");
          const settled = await settleReservation(this.sequelize, t, found.account_id, id!, RESERVATIONS.next(status, "commit"), price.credits);
          const usage = input.usage!;
          const charged = await this.ledger.debitIn(t, {
            accountId: found.account_id,
            credits: price.credits,
            type: "deduction",
            description: describeUsage(price.operationType, input.relatedObjectType, input.relatedObjectId),
            metadata: { ...input.metadata, reservation_id: id! },
            usage: usageRecordOf(price, usage, input.relatedObjectType, input.relatedObjectId),
          });
          return { reservation: view(settled), transaction: charged.transaction, usageLog: charged.usageLog!, balance: charged.balance };
        });
        return result;
      },
      options,
    );
  }

  /** Frees a hold; an already released hold is answered as it is. */
  async release(reservationId: string, options: TransactionOptions = {}): Promise<{ reservation: ReservationView; balance: BalanceView }> {
    const id = requireUuid(reservationId, "reservation_id");
    const found = await this.find(id);
    return inTransaction(
      this.sequelize,
      async (t) => {
        // Account lock first (the ledger's order, as commit takes them), then the reservation.
        await this.ledger.accountStateIn(t, found.account_id);
        const r = await this.lock(t, found.account_id, id);
        let row: Row = r;
        if (r.status === "active") {
          // A hold past expires_at is recorded as expired, not released.
          row = await settleReservation(this.sequelize, t, found.account_id, id, RESERVATIONS.next(r.status, r.expired ? "expire" : "release"));
          this.ledger.changedOnCommit(t, found.account_id);
        } else if (r.status === "committed") {
          checkTransition(id, r.status, "release");
        }
        return { reservation: view(row), balance: await this.ledger.accountStateIn(t, found.account_id) };
      },
      options,
    );
  }

  /**
   * Records holds that reached their expiry uncommitted as EXPIRED (each
   * writes its reservation.expired event through the table's trigger);
   * they stopped counting at expires_at already. Rows another transaction
   * holds are left for the next sweep. Returns how many were marked.
   */
  expireDue(limit = 500): Promise<number> {
    return expireDueReservations(this.sequelize, limit);
  }

  private async find(id: string): Promise<Row> {
    const row = await findReservation(this.sequelize, id);
    if (!row) throw notFound("reservation", id);
    return row;
  }

  private async lock(t: Transaction, accountId: string, id: string): Promise<Row> {
    const row = await lockReservation(this.sequelize, t, accountId, id);
    if (!row) throw notFound("reservation", id);
    return row;
  }
}

/** The status callers see: an active hold past expires_at is expired (it stopped counting then). */
function statusOf(r: Row): ReservationStatus {
  return r.status === "active" && r.expired ? "expired" : r.status;
}

function view(r: Row): ReservationView {
  const status = statusOf(r);
  const out: ReservationView = {
    id: r.id,
    accountId: r.account_id,
    operationType: r.operation_type,
    credits: BigInt(r.credits),
    status,
    creditsCommitted: BigInt(r.credits_committed),
    expiresAt: r.expires_at,
    createdAt: r.created_at,
    costConfigVersionId: r.cost_config_version_id ?? "",
  };
  if (r.settled_at) out.settledAt = r.settled_at;
  if (r.priced_at) out.pricedAt = r.priced_at;
  return out;
}
