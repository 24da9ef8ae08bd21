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
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { BillingError, Reason, Violations, failedPrecondition, insufficientCredits, notFound } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import { checkMetadata, checkText, requireId, requireIdempotencyKey, requireUuid } from "../validation.js";
import { describeUsage, usageRecordOf, type CreditLedger } from "./ledger.js";
import { normalizeOperationType } from "./operations.js";
import { Pricing } from "./pricing.js";
import type { BalanceView, JsonObject, LedgerEntry, UsageInput, UsageLogEntry } from "./types.js";

export type ReservationStatus = "active" | "committed" | "released" | "expired";

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

export const DEFAULT_TTL_SECONDS = 15 * 60;
export const MAX_TTL_SECONDS = 24 * 60 * 60;

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

interface Row {
  id: string;
  account_id: string;
  operation_type: string;
  credits: string;
  status: ReservationStatus;
  credits_committed: string;
  expires_at: Date;
  created_at: Date;
  settled_at: Date | null;
  expired: boolean;
  cost_config_version_id: string | null;
  priced_at: Date | null;
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
          const [row] = await this.sequelize.query<Row>(
            `INSERT INTO credit_reservations (account_id, operation_type, credits, expires_at, cost_config_version_id, priced_at)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5, $6) RETURNING *, false AS expired`,
            { bind: [input.accountId, operationType, input.credits.toString(), ttl, costVersionId || null, arrival.toISOString()], transaction: t, type: QueryTypes.SELECT },
          );
          await this.notify(t, input.accountId);
          const held = state.reserved + input.credits;
          return { reservation: view(row!), balance: { ...state, reserved: held, available: state.available - input.credits } };
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
          await this.sequelize.query(`SELECT 1 FROM billing_accounts WHERE account_id = $1 FOR UPDATE`, { bind: [found.account_id], transaction: t });
          const r = await this.lock(t, found.account_id, id!);
          if (r.status !== "active" || r.expired) {
            throw failedPrecondition(Reason.InvalidStateTransition, `reservation ${id} is ${r.expired && r.status === "active" ? "expired" : r.status} and cannot be committed`, {
              status: r.expired && r.status === "active" ? "expired" : r.status,
            });
          }
          const [settled] = await this.sequelize.query<Row>(
            `UPDATE credit_reservations SET status = 'committed', credits_committed = $3, settled_at = now()
             WHERE account_id = $1 AND id = $2 RETURNING *, false AS expired`,
            { bind: [found.account_id, id, price.credits.toString()], transaction: t, type: QueryTypes.SELECT },
          );
          const usage = input.usage!;
          const charged = await this.ledger.debitIn(t, {
            accountId: found.account_id,
            credits: price.credits,
            type: "deduction",
            description: describeUsage(price.operationType, input.relatedObjectType, input.relatedObjectId),
            metadata: { ...input.metadata, reservation_id: id! },
            usage: usageRecordOf(price, usage, input.relatedObjectType, input.relatedObjectId),
          });
          return { reservation: view(settled!), transaction: charged.transaction, usageLog: charged.usageLog!, balance: charged.balance };
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
          const status = r.expired ? "expired" : "released";
          [row] = (await this.sequelize.query<Row>(
            `UPDATE credit_reservations SET status = $3, settled_at = now() WHERE account_id = $1 AND id = $2 RETURNING *, false AS expired`,
            { bind: [found.account_id, id, status], transaction: t, type: QueryTypes.SELECT },
          )) as [Row];
          await this.notify(t, found.account_id);
        } else if (r.status === "committed") {
          throw failedPrecondition(Reason.InvalidStateTransition, `reservation ${id} is committed and cannot be released`, { status: "committed" });
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
  async expireDue(limit = 500): Promise<number> {
    const rows = await this.sequelize.query(
      `UPDATE credit_reservations r SET status = 'expired', settled_at = now()
       FROM (SELECT account_id, id FROM credit_reservations WHERE status = 'active' AND expires_at <= now()
             ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
       WHERE r.account_id = due.account_id AND r.id = due.id RETURNING r.id`,
      { bind: [limit], type: QueryTypes.SELECT },
    );
    return rows.length;
  }

  private async find(id: string): Promise<Row> {
    const [row] = await this.sequelize.query<Row>(`SELECT *, expires_at <= now() AS expired FROM credit_reservations WHERE id = $1`, { bind: [id], type: QueryTypes.SELECT });
    if (!row) throw notFound("reservation", id);
    return row;
  }

  private async lock(t: Transaction, accountId: string, id: string): Promise<Row> {
    const [row] = await this.sequelize.query<Row>(`SELECT *, expires_at <= now() AS expired FROM credit_reservations WHERE account_id = $1 AND id = $2 FOR UPDATE`, {
      bind: [accountId, id],
      transaction: t,
      type: QueryTypes.SELECT,
    });
    if (!row) throw notFound("reservation", id);
    return row;
  }

  private async notify(t: Transaction, accountId: string): Promise<void> {
    this.ledger.changedOnCommit(t, accountId);
  }
}

function view(r: Row): ReservationView {
  const status: ReservationStatus = r.status === "active" && r.expired ? "expired" : r.status;
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


