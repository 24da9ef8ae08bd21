/**
 * The credit ledger.
 *
 * Rules (see README.md, "The credit model"):
 * - Every balance change is one immutable credit_transactions row written in
 *   the same database transaction as the change; balance = Σ amounts, and
 *   each row's balance_after is the running sum.
 * - The account's billing_accounts row is the lock that orders its changes;
 *   its CHECK keeps the balance from ever going below zero.
 * - A deduction needs that many *available* credits (balance - open
 *   reservations - credits of lots not yet effective), else
 *   FAILED_PRECONDITION / INSUFFICIENT_CREDITS and nothing is written.
 * - Credits come in lots (lots.ts): every addition creates one, every debit
 *   draws from them in burn-down order through billing_debit (debit.ts),
 *   and balance = Σ lots' remaining. Lots past their expiry leave the
 *   balance before anything reads or spends it.
 */
import type { Sequelize, Transaction } from "sequelize";
import { accountState, balanceSnapshot, type AccountStateRow } from "../../db/credits/accounts.js";
import { insertCredit, listTransactions } from "../../db/credits/ledger.js";
import { hasDueLots } from "../../db/credits/lots.js";
import { inTransaction, sqlState, type TransactionOptions } from "../../db/transaction.js";
import { BillingError, Reason, Violations, idempotencyKeyReused, insufficientCredits, invalidField } from "../errors.js";
import { requestHash, runIdempotent } from "../idempotency.js";
import type { JsonObject } from "../json.js";
import { pageOf, pageRequest } from "../pagination.js";
import { checkMetadata, checkText, requireId, requireIdempotencyKey, requireUuid, truncateText } from "../validation.js";
import { normalizeOperationType } from "./operations.js";
import { Pricing } from "./pricing.js";
import { DeductionBatcher, deductionDebit, type DeductionJob } from "./deduction-batcher.js";
import { expireDueLots, runDebits, type DebitRequest, type DebitResult } from "./debit.js";
import { NO_METER, type LedgerMeter } from "./meter.js";
import { checkLotTerms, lotViewOf, type LotTerms } from "./lots.js";
import type { Price } from "./pricing.js";
import type { Allocation, BalanceView, DeductResult, GrantResult, LedgerEntry, LotCategory, TransactionType, UsageInput, UsageRecord } from "./types.js";

export interface GrantInput {
  accountId: string;
  amount: bigint;
  type: TransactionType | undefined;
  description: string;
  metadata: JsonObject;
  paymentId: string;
  idempotencyKey: string;
  /** Lot terms: category (undefined: from the type), priority, effective and expiry times. */
  lot: Partial<LotTerms>;
}

export interface DeductInput {
  accountId: string;
  operationType: string;
  usage: UsageInput | undefined;
  relatedObjectType: string;
  relatedObjectId: string;
  metadata: JsonObject;
  idempotencyKey: string;
}

export interface ListTransactionsInput {
  accountId: string;
  types: TransactionType[];
  startTime?: Date;
  endTime?: Date;
  pageSize: number;
  pageToken: string;
}

const GRANT_TYPES: readonly TransactionType[] = ["purchase", "subscription", "refund", "adjustment"];

/** A debit to write inside a transaction (see DebitRequest; no idempotency key: the caller's transaction has it). */
export type Debit = Omit<DebitRequest, "key" | "hash">;

/** A credit to write: the ledger entry and the lot it creates. */
export interface Credit {
  accountId: string;
  amount: bigint;
  type: TransactionType;
  description: string;
  metadata: JsonObject;
  paymentId: string | null;
  /** The lot's terms; category defaults from the type. */
  lot?: Partial<LotTerms>;
  packageId?: string | null;
  /** Who granted it (key name or role, "payment", ...). */
  createdBy?: string;
}

export interface AdjustInput {
  accountId: string;
  amount: bigint;
  reason: string;
  idempotencyKey: string;
}

/** The credit ledger service. */
export class CreditLedger {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly pricing: Pricing,
    /** Called after the commit of every transaction that changed an account's balance or holds. */
    private readonly onBalanceChange: (accountId: string) => void = () => undefined,
    /** Told of credits moved and batches run (metrics). */
    private readonly meter: LedgerMeter = NO_METER,
    /** How many deduction batches run at once (DEDUCT_BATCHES; the batcher's default when unset). */
    batchesInFlight?: number,
  ) {
    this.batcher = new DeductionBatcher(sequelize, (job) => this.deductOne(job), (accountId) => this.onBalanceChange(accountId), meter, batchesInFlight);
  }

  private readonly batcher: DeductionBatcher;

  /** Runs `fn` once `t` commits (the outermost transaction: a savepoint "commits" early). */
  private afterCommit(t: Transaction, fn: () => void): void {
    let root = t as Transaction & { parent?: Transaction };
    while (root.parent) root = root.parent as Transaction & { parent?: Transaction };
    root.afterCommit(fn);
  }

  /** Announces a balance change of `accountId` once `t` commits. */
  changedOnCommit(t: Transaction, accountId: string): void {
    this.afterCommit(t, () => this.onBalanceChange(accountId));
  }

  /** Counts expired credits once they are committed: at once for a statement of its own, else when `t` commits. */
  private expired(t?: Transaction) {
    return (accountId: string, credits: bigint) => {
      if (t) this.afterCommit(t, () => this.meter.credits("expired", credits));
      else this.meter.credits("expired", credits);
      if (t) this.changedOnCommit(t, accountId);
      else this.onBalanceChange(accountId);
    };
  }

  /**
   * Brings accounts up to date, each in a statement of its own: their due
   * lots expire. Accounts with nothing due are not locked (a cheap index check first).
   */
  async expire(accountIds: string[]): Promise<void> {
    for (const accountId of accountIds) {
      if (await hasDueLots(this.sequelize, accountId)) await expireDueLots(this.sequelize, [accountId], undefined, this.expired());
    }
  }

  /** The account's balance; zeros for an account never credited. */
  async getBalance(accountId: string): Promise<BalanceView> {
    requireId(accountId, "account_id");
    const read = () => balanceSnapshot(this.sequelize, accountId);
    let row = await read();
    if (row.due) {
      // The sweeper is behind: expire now, so the balance never includes expired credits.
      await this.expire([accountId]);
      row = await read();
    }
    const view = balanceViewOf(accountId, row);
    view.byCategory = (row.by_category ?? []).map((c) => ({ category: c.category as LotCategory, amount: BigInt(c.amount) }));
    view.nextExpiringAmount = row.next_expiry ? BigInt(row.next_expiry.amount) : 0n;
    if (row.next_expiry) view.nextExpiresAt = new Date(row.next_expiry.at);
    return view;
  }

  /**
   * Locks the account inside `t`, expires its due lots, and returns its
   * balance, holds and pending credits: what a hold or a debit decides on.
   */
  async accountStateIn(t: Transaction, accountId: string): Promise<BalanceView> {
    await expireDueLots(this.sequelize, [accountId], t, this.expired(t)); // also takes the account's row lock
    return balanceViewOf(accountId, await accountState(this.sequelize, accountId, t));
  }

  /** Adds credits; idempotent by key. */
  async grant(input: GrantInput, actor: string, options: TransactionOptions = {}): Promise<GrantResult> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    if (input.amount <= 0n) v.add("amount", "must be greater than zero");
    if (!input.type || !GRANT_TYPES.includes(input.type)) v.add("type", "must be PURCHASE, SUBSCRIPTION, REFUND or ADJUSTMENT");
    v.collect(() => checkText(input.description, "description"));
    v.collect(() => checkMetadata(input.metadata));
    if (input.paymentId !== "") v.collect(() => requireUuid(input.paymentId, "payment_id"));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    const lot = v.collect(() => checkLotTerms(input.lot, input.type));
    v.throwIfAny();
    const entry: Credit = {
      accountId: input.accountId,
      amount: input.amount,
      type: input.type!,
      description: input.description,
      metadata: input.metadata,
      paymentId: input.paymentId || null,
      lot,
      createdBy: actor,
    };
    // The lot terms join the hashed request only when given, so keys stored before lots existed still replay.
    const { lot: terms, ...rest } = input;
    const request = Object.values(terms).some((x) => x !== undefined) ? { ...input, paymentId: input.paymentId.toLowerCase() } : { ...rest, paymentId: input.paymentId.toLowerCase() };
    return inTransaction(
      this.sequelize,
      async (t) => (await runIdempotent(this.sequelize, t, { accountId: input.accountId, key: input.idempotencyKey, method: "GrantCredits", request }, () => this.creditIn(t, entry))).result,
      options,
    );
  }

  /**
   * Adds credits inside the caller's transaction: the one place positive
   * ledger entries (and the lots they create) are written.
   */
  async creditIn(t: Transaction, entry: Credit): Promise<GrantResult> {
    const terms = checkLotTerms(entry.lot ?? {}, entry.type);
    // Lots due to expire leave first, so the entry's balance_after holds no expired credits.
    await expireDueLots(this.sequelize, [entry.accountId], t, this.expired(t));
    const row = await overflowNamed("amount", () =>
      insertCredit(this.sequelize, t, {
        accountId: entry.accountId,
        amount: entry.amount,
        type: entry.type,
        description: entry.description,
        metadata: entry.metadata,
        paymentId: entry.paymentId,
        category: terms.category,
        priority: terms.priority,
        effectiveAt: terms.effectiveAt,
        expiresAt: terms.expiresAt,
        packageId: entry.packageId ?? null,
        createdBy: entry.createdBy ?? "",
      }),
    );
    const balanceAfter = BigInt(row.balance_after);
    this.changedOnCommit(t, entry.accountId);
    this.afterCommit(t, () => this.meter.credits("granted", entry.amount));
    return {
      transaction: {
        id: row.id,
        accountId: entry.accountId,
        type: entry.type,
        amount: entry.amount,
        balanceAfter,
        description: entry.description,
        metadata: entry.metadata,
        paymentId: entry.paymentId ?? "",
        createdAt: row.created_at,
        allocations: [],
      },
      balance: balanceView(entry.accountId, balanceAfter, BigInt(row.reserved), row.updated_at, BigInt(row.pending)),
      lot: lotViewOf(row),
    };
  }

  /**
   * Charges an AI operation: a DEDUCTION and its usage log, together;
   * idempotent by key. Priced with the versions in force at the request's
   * arrival, before it is queued: a batch that runs after a new version took
   * effect charges what the request was priced at.
   */
  async deduct(input: DeductInput, options: TransactionOptions = {}): Promise<DeductResult> {
    const arrival = new Date();
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const operationType = v.collect(() => normalizeOperationType(input.operationType));
    Pricing.checkUsage(v, input.usage);
    v.collect(() => checkText(input.relatedObjectType, "related_object_type"));
    v.collect(() => checkText(input.relatedObjectId, "related_object_id"));
    v.collect(() => checkMetadata(input.metadata));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    await this.pricing.checkOperation(v, operationType);
    v.throwIfAny();
    const usage = input.usage!;
    const price = await this.pricing.price(operationType!, usage, "usage", { at: arrival });
    const job: DeductionJob = {
      accountId: input.accountId,
      credits: price.credits,
      description: describeUsage(price.operationType, input.relatedObjectType, input.relatedObjectId),
      metadata: input.metadata,
      ...usageRecordOf(price, usage, input.relatedObjectType, input.relatedObjectId),
      idempotencyKey: input.idempotencyKey,
      method: "DeductCredits",
      requestHash: requestHash("DeductCredits", { ...input, operationType }),
      deadline: options.timeoutMs === undefined ? undefined : Date.now() + options.timeoutMs,
    };
    // Coalesced with concurrent deductions (see deduction-batcher.ts, which
    // also says how the caller's deadline applies).
    return this.batcher.submit(job);
  }

  /**
   * One deduction on its own, through the same billing_debit call as a
   * batch of one: for keys taken within a batch, and for the requests of a
   * batch that failed as a whole.
   */
  private deductOne(job: DeductionJob): Promise<DeductResult> {
    const options = job.deadline === undefined ? {} : { timeoutMs: Math.max(1, job.deadline - Date.now()) };
    return inTransaction(
      this.sequelize,
      async (t) => {
        const o = (await runDebits(this.sequelize, job.method, [deductionDebit(job)], t, this.expired(t)))[0]!;
        switch (o.outcome) {
          case "ok":
            this.changedOnCommit(t, job.accountId);
            this.afterCommit(t, () => this.meter.credits("deducted", job.credits));
            return o.result as DeductResult;
          case "replay":
            return o.result as DeductResult;
          case "insufficient":
            throw insufficientCredits(job.accountId, job.credits, o.available);
          case "reused":
            throw idempotencyKeyReused(job.idempotencyKey);
          default:
            // 'taken': the key is stored without its answer (a claim committed empty); a retry decides afresh.
            throw new BillingError("aborted", Reason.Conflict, "the request conflicted with a concurrent one; retry it");
        }
      },
      options,
    );
  }

  /** Admin: a signed manual adjustment that never takes the available balance below zero; idempotent by key. */
  async adjust(input: AdjustInput, actor: string, options: TransactionOptions = {}): Promise<GrantResult> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    if (input.amount === 0n) v.add("amount", "must not be zero");
    if (input.reason === "") v.add("reason", "is required");
    else v.collect(() => checkText(input.reason, "reason"));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    const metadata = { adjusted_by: actor };
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: input.accountId, key: input.idempotencyKey, method: "AdjustCredits", request: input }, () =>
          input.amount > 0n
            ? this.creditIn(t, { accountId: input.accountId, amount: input.amount, type: "adjustment", description: input.reason, metadata, paymentId: null, createdBy: actor })
            : this.debitIn(t, { accountId: input.accountId, credits: -input.amount, type: "adjustment", description: input.reason, metadata }),
        );
        return result;
      },
      options,
    );
  }

  /**
   * Takes credits inside the caller's transaction through billing_debit
   * (burn-down order, allocations, usage log); INSUFFICIENT_CREDITS when a
   * strict debit does not fit. The one way negative ledger entries are
   * written. Undefined when a partial or whole-lot debit found nothing to take.
   */
  async debitIn(t: Transaction, d: Debit): Promise<DebitResult>;
  async debitIn(t: Transaction, d: Debit, options: { allowEmpty: true }): Promise<DebitResult | undefined>;
  async debitIn(t: Transaction, d: Debit, options: { allowEmpty?: boolean } = {}): Promise<DebitResult | undefined> {
    const o = (await runDebits(this.sequelize, "", [d], t, this.expired(t)))[0]!;
    switch (o.outcome) {
      case "ok": {
        this.changedOnCommit(t, d.accountId);
        const taken = -o.result.transaction.amount;
        this.afterCommit(t, () => this.meter.credits("deducted", taken));
        return o.result;
      }
      case "insufficient":
        throw insufficientCredits(d.accountId, d.credits, o.available);
      case "empty":
        if (options.allowEmpty) return undefined;
        throw insufficientCredits(d.accountId, d.credits, 0n);
      default:
        throw new Error(`a debit without a key cannot be ${o.outcome}`);
    }
  }

  /** Locks the account inside the caller's transaction and returns its available credits. */
  async availableIn(t: Transaction, accountId: string): Promise<bigint> {
    return (await this.accountStateIn(t, accountId)).available;
  }

  /** Pages through an account's ledger, newest first (keyset on id). */
  async listTransactions(input: ListTransactionsInput): Promise<{ transactions: LedgerEntry[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const filters = { a: input.accountId, t: [...input.types].sort(), s: input.startTime, e: input.endTime };
    const paging = v.collect(() => pageRequest(input, "transactions", filters, ["digits"]));
    if (input.startTime && input.endTime && input.startTime > input.endTime) v.add("end_time", "must not be before start_time");
    v.throwIfAny();
    const { size, after } = paging!;
    const rows = await listTransactions(this.sequelize, input, after?.[0] as string | undefined, size + 1);
    const page = pageOf(rows, size, (r) => [r.id], "transactions", filters);
    return {
      transactions: page.items.map((r) => ({
        id: r.id,
        accountId: r.account_id,
        type: r.type as TransactionType,
        amount: BigInt(r.amount),
        balanceAfter: BigInt(r.balance_after),
        description: r.description,
        metadata: r.metadata,
        paymentId: r.payment_id ?? "",
        createdAt: r.created_at,
        allocations: r.allocations.map((a): Allocation => ({ lotId: a.lot_id, amount: BigInt(a.amount) })),
      })),
      nextPageToken: page.nextPageToken,
    };
  }
}

/** A balance as callers see it: available (balance - holds - pending credits) never below zero. */
function balanceView(accountId: string, balance: bigint, reserved: bigint, updatedAt: Date | undefined, pending = 0n): BalanceView {
  const free = balance - reserved - pending;
  const view: BalanceView = { accountId, balance, reserved, available: free > 0n ? free : 0n };
  if (updatedAt) view.updatedAt = updatedAt;
  return view;
}

function balanceViewOf(accountId: string, row: AccountStateRow): BalanceView {
  return balanceView(accountId, BigInt(row.balance ?? 0), BigInt(row.reserved), row.updated_at ?? undefined, BigInt(row.pending));
}

/** The usage-log fields of a priced usage. */
export function usageRecordOf(price: Price, usage: UsageInput, relatedObjectType: string, relatedObjectId: string): UsageRecord {
  return {
    operationType: price.operationType,
    costUsd: price.costUsd,
    model: usage.model,
    tokensInput: usage.tokensInput,
    tokensOutput: usage.tokensOutput,
    relatedObjectType,
    relatedObjectId,
    costConfigVersionId: price.costConfigVersionId,
    modelPriceVersionId: price.modelPriceVersionId,
  };
}

/** The description of a usage charge. */
export function describeUsage(operationType: string, relatedType: string, relatedId: string): string {
  const about = relatedType || relatedId ? ` (${[relatedType, relatedId].filter(Boolean).join(" ")})` : "";
  return truncateText(`Usage: ${operationType}${about}`);
}

/** Runs `query`; a bigint overflow (SQLSTATE 22003) is INVALID_ARGUMENT naming `field`. */
async function overflowNamed<T>(field: string, query: () => Promise<T>): Promise<T> {
  try {
    return await query();
  } catch (err) {
    if (sqlState(err) === "22003") throw invalidField(field, "would take the balance past the largest balance a ledger holds (2^63-1 credits)");
    throw err;
  }
}
