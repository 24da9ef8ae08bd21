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
 *   reservations), else FAILED_PRECONDITION / INSUFFICIENT_CREDITS and
 *   nothing is written.
 */
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { inTransaction, sqlState, type TransactionOptions } from "../../db/transaction.js";
import { Violations, insufficientCredits, invalidField } from "../errors.js";
import { hasDollarKeys, requestHash, runIdempotent } from "../idempotency.js";
import { decodePageToken, pageOf, pageSize } from "../pagination.js";
import { checkMetadata, checkText, requireId, requireIdempotencyKey, requireUuid } from "../validation.js";
import { normalizeOperationType } from "./operations.js";
import { Pricing } from "./pricing.js";
import { DeductionBatcher, type DeductionJob } from "./deduction-batcher.js";
import type { Price } from "./pricing.js";
import type { BalanceView, DeductResult, GrantResult, JsonObject, LedgerEntry, TransactionType, UsageInput, UsageLogEntry, UsageRecord } from "./types.js";

export interface GrantInput {
  accountId: string;
  amount: bigint;
  type: TransactionType | undefined;
  description: string;
  metadata: JsonObject;
  paymentId: string;
  idempotencyKey: string;
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

export type { DeductResult, GrantResult };

const GRANT_TYPES: readonly TransactionType[] = ["purchase", "subscription", "refund", "adjustment"];

/** Credits held by open, unexpired reservations of account $1. */
export const RESERVED_SQL = `SELECT COALESCE(SUM(credits), 0)::bigint AS reserved FROM credit_reservations
  WHERE account_id = $1 AND status = 'active' AND expires_at > now()`;

/** A debit to write: the DEDUCTION (or negative ADJUSTMENT) and, for AI usage, its usage log. */
export interface Debit {
  accountId: string;
  credits: bigint;
  type: "deduction" | "adjustment" | "refund";
  description: string;
  metadata: JsonObject;
  paymentId?: string | null;
  usage?: UsageRecord;
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
  ) {
    this.batcher = new DeductionBatcher(
      sequelize,
      (job) => this.deductOne(job),
      (accountId) => this.onBalanceChange(accountId),
    );
  }

  private readonly batcher: DeductionBatcher;

  /** Announces a balance change of `accountId` once `t` commits. */
  changedOnCommit(t: Transaction, accountId: string): void {
    // A savepoint "commits" early: wait for the outermost transaction.
    let root = t as Transaction & { parent?: Transaction };
    while (root.parent) root = root.parent as Transaction & { parent?: Transaction };
    root.afterCommit(() => this.onBalanceChange(accountId));
  }

  /** The account's balance; zeros for an account never credited. */
  async getBalance(accountId: string): Promise<BalanceView> {
    requireId(accountId, "account_id");
    const [row] = await this.sequelize.query<{ balance: string | null; updated_at: Date | null; reserved: string }>(
      `SELECT a.balance, a.updated_at, r.reserved FROM (${RESERVED_SQL}) r LEFT JOIN billing_accounts a ON a.account_id = $1`,
      { bind: [accountId], type: QueryTypes.SELECT },
    );
    return balanceView(accountId, BigInt(row?.balance ?? 0), BigInt(row?.reserved ?? 0), row?.updated_at ?? undefined);
  }

  /** Adds credits; idempotent by key. */
  async grant(input: GrantInput, options: TransactionOptions = {}): Promise<GrantResult> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    if (input.amount <= 0n) v.add("amount", "must be greater than zero");
    if (!input.type || !GRANT_TYPES.includes(input.type)) v.add("type", "must be PURCHASE, SUBSCRIPTION, REFUND or ADJUSTMENT");
    v.collect(() => checkText(input.description, "description"));
    v.collect(() => checkMetadata(input.metadata));
    if (input.paymentId !== "") v.collect(() => requireUuid(input.paymentId, "payment_id"));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    return this.applyCredit(
      { accountId: input.accountId, amount: input.amount, type: input.type!, description: input.description, metadata: input.metadata, paymentId: input.paymentId || null },
      { method: "GrantCredits", key: input.idempotencyKey, request: { ...input, paymentId: input.paymentId.toLowerCase() } },
      options,
    );
  }

  /**
   * Adds credits inside a transaction, idempotently; the one place positive
   * ledger entries are written.
   */
  private applyCredit(
    entry: { accountId: string; amount: bigint; type: TransactionType; description: string; metadata: JsonObject; paymentId: string | null },
    idem: { method: string; key: string; request: unknown },
    options: TransactionOptions,
  ): Promise<GrantResult> {
    return inTransaction(
      this.sequelize,
      async (t) => {
        const { result } = await runIdempotent(this.sequelize, t, { accountId: entry.accountId, ...idem }, () => this.creditIn(t, entry));
        return result;
      },
      options,
    );
  }

  /** Adds credits inside the caller's transaction: the one place positive ledger entries are written. */
  async creditIn(
    t: Transaction,
    entry: { accountId: string; amount: bigint; type: TransactionType; description: string; metadata: JsonObject; paymentId: string | null },
  ): Promise<GrantResult> {
    const [row] = await overflowNamed("amount", () => this.sequelize.query<{ id: string; balance_after: string; created_at: Date; updated_at: Date; reserved: string }>(
      `WITH acct AS (
         INSERT INTO billing_accounts AS a (account_id, balance) VALUES ($1, $2)
         ON CONFLICT (account_id) DO UPDATE SET balance = a.balance + EXCLUDED.balance, updated_at = now()
         RETURNING a.balance, a.updated_at),
       tx AS (
         INSERT INTO credit_transactions (account_id, type, amount, balance_after, description, metadata, payment_id)
         SELECT $1, $3, $2, acct.balance, $4, $5::jsonb, $6 FROM acct
         RETURNING id, balance_after, created_at)
       SELECT tx.id, tx.balance_after, tx.created_at, acct.updated_at, (${RESERVED_SQL}) AS reserved FROM tx, acct`,
      {
        bind: [entry.accountId, entry.amount.toString(), entry.type, entry.description, JSON.stringify(entry.metadata), entry.paymentId],
        transaction: t,
        type: QueryTypes.SELECT,
      },
    ));
    const balanceAfter = BigInt(row!.balance_after);
    this.changedOnCommit(t, entry.accountId);
    return {
      transaction: {
        id: row!.id,
        accountId: entry.accountId,
        type: entry.type,
        amount: entry.amount,
        balanceAfter,
        description: entry.description,
        metadata: entry.metadata,
        paymentId: entry.paymentId ?? "",
        createdAt: row!.created_at,
      },
      balance: balanceView(entry.accountId, balanceAfter, BigInt(row!.reserved), row!.updated_at),
    };
  }

  /** Charges an AI operation: a DEDUCTION and its usage log, together; idempotent by key. */
  async deduct(input: DeductInput, options: TransactionOptions = {}): Promise<DeductResult> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const operationType = v.collect(() => normalizeOperationType(input.operationType));
    Pricing.checkUsage(v, input.usage);
    v.collect(() => checkText(input.relatedObjectType, "related_object_type"));
    v.collect(() => checkText(input.relatedObjectId, "related_object_id"));
    v.collect(() => checkMetadata(input.metadata));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    const usage = input.usage!;
    const price = await this.pricing.price(operationType!, usage);
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
    // also says how the caller's deadline applies). The batch function writes
    // metadata into the stored response as it is, so metadata with keys that
    // the stored encoding escapes ("$...") takes the single path.
    if (hasDollarKeys(input.metadata)) return this.deductOne(job);
    return this.batcher.submit(job);
  }

  /** One deduction in its own transaction: replays, reused keys, and the batcher's taken keys. */
  private deductOne(job: DeductionJob): Promise<DeductResult> {
    const options = job.deadline === undefined ? {} : { timeoutMs: Math.max(1, job.deadline - Date.now()) };
    return inTransaction(this.sequelize, async (t) => {
      const { result } = await runIdempotent(
        this.sequelize,
        t,
        { accountId: job.accountId, key: job.idempotencyKey, method: job.method, request: undefined, requestHash: job.requestHash },
        async () =>
          (await this.debitIn(t, {
            accountId: job.accountId,
            credits: job.credits,
            type: "deduction",
            description: job.description,
            metadata: job.metadata,
            usage: job,
          })) as DeductResult,
      );
      return result;
    }, options);
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
            ? this.creditIn(t, { accountId: input.accountId, amount: input.amount, type: "adjustment", description: input.reason, metadata, paymentId: null })
            : this.debitIn(t, { accountId: input.accountId, credits: -input.amount, type: "adjustment", description: input.reason, metadata }),
        );
        return result;
      },
      options,
    );
  }

  /**
   * Takes `credits` inside the caller's transaction if that many are
   * available, writing the ledger row (and usage log); otherwise
   * INSUFFICIENT_CREDITS. The one place negative ledger entries are written.
   */
  async debitIn(t: Transaction, d: Debit): Promise<GrantResult & { usageLog?: UsageLogEntry }> {
    // Lock first, in its own statement, so that the next statement's snapshot
    // sees every reservation committed before we got the lock.
    const locked = await this.sequelize.query<{ balance: string }>(`SELECT balance FROM billing_accounts WHERE account_id = $1 FOR UPDATE`, {
      bind: [d.accountId],
      transaction: t,
      type: QueryTypes.SELECT,
    });
    const u = d.usage;
    const logCte = u
      ? `, log AS (
           INSERT INTO credit_usage_logs (account_id, transaction_id, operation_type, credits_used, cost_usd, model_used,
                                          tokens_input, tokens_output, related_object_type, related_object_id, metadata, created_at)
           SELECT $1, tx.id, $7, $2, $8, $9, $10, $11, $12, $13, $4::jsonb, tx.created_at FROM tx
           RETURNING id)`
      : "";
    const bind: unknown[] = [d.accountId, d.credits.toString(), d.description, JSON.stringify(d.metadata), d.type, d.paymentId ?? null];
    if (u) bind.push(u.operationType, u.costUsd || null, u.model, u.tokensInput.toString(), u.tokensOutput.toString(), u.relatedObjectType, u.relatedObjectId);
    const rows =
      locked.length === 0
        ? []
        : await this.sequelize.query<{ tx_id: string; log_id: string | null; created_at: Date; balance: string; updated_at: Date; reserved: string }>(
            `WITH res AS (${RESERVED_SQL}),
             acct AS (
               UPDATE billing_accounts a SET balance = a.balance - $2, updated_at = now() FROM res
               WHERE a.account_id = $1 AND a.balance - res.reserved >= $2
               RETURNING a.balance, a.updated_at, res.reserved),
             tx AS (
               INSERT INTO credit_transactions (account_id, type, amount, balance_after, description, metadata, payment_id)
               SELECT $1, $5, -$2::bigint, acct.balance, $3, $4::jsonb, $6::uuid FROM acct
               RETURNING id, created_at)${logCte}
             SELECT tx.id AS tx_id, ${u ? "log.id" : "NULL"} AS log_id, tx.created_at, acct.balance, acct.updated_at, acct.reserved
             FROM tx, acct${u ? ", log" : ""}`,
            { bind, transaction: t, type: QueryTypes.SELECT },
          );
    const row = rows[0];
    if (!row) {
      const [r] = await this.sequelize.query<{ reserved: string }>(RESERVED_SQL, { bind: [d.accountId], transaction: t, type: QueryTypes.SELECT });
      const balance = BigInt(locked[0]?.balance ?? 0);
      throw insufficientCredits(d.accountId, d.credits, balance - BigInt(r?.reserved ?? 0));
    }
    const balanceAfter = BigInt(row.balance);
    this.changedOnCommit(t, d.accountId);
    const result: GrantResult & { usageLog?: UsageLogEntry } = {
      transaction: {
        id: row.tx_id,
        accountId: d.accountId,
        type: d.type,
        amount: -d.credits,
        balanceAfter,
        description: d.description,
        metadata: d.metadata,
        paymentId: d.paymentId ?? "",
        createdAt: row.created_at,
      },
      balance: balanceView(d.accountId, balanceAfter, BigInt(row.reserved), row.updated_at),
    };
    if (u) {
      result.usageLog = {
        id: row.log_id!,
        accountId: d.accountId,
        operationType: u.operationType,
        creditsUsed: d.credits,
        costUsd: u.costUsd,
        modelUsed: u.model,
        tokensInput: u.tokensInput,
        tokensOutput: u.tokensOutput,
        relatedObjectType: u.relatedObjectType,
        relatedObjectId: u.relatedObjectId,
        metadata: d.metadata,
        createdAt: row.created_at,
      };
    }
    return result;
  }

  /** Locks the account inside the caller's transaction and returns its available credits. */
  async availableIn(t: Transaction, accountId: string): Promise<bigint> {
    await this.sequelize.query(`SELECT 1 FROM billing_accounts WHERE account_id = $1 FOR UPDATE`, { bind: [accountId], transaction: t });
    const [row] = await this.sequelize.query<{ balance: string | null; reserved: string }>(
      `SELECT a.balance, r.reserved FROM (${RESERVED_SQL}) r LEFT JOIN billing_accounts a ON a.account_id = $1`,
      { bind: [accountId], transaction: t, type: QueryTypes.SELECT },
    );
    const available = BigInt(row?.balance ?? 0) - BigInt(row?.reserved ?? 0);
    return available > 0n ? available : 0n;
  }

  /** Pages through an account's ledger, newest first (keyset on id). */
  async listTransactions(input: ListTransactionsInput): Promise<{ transactions: LedgerEntry[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const size = v.collect(() => pageSize(input.pageSize));
    if (input.startTime && input.endTime && input.startTime > input.endTime) v.add("end_time", "must not be before start_time");
    v.throwIfAny();
    const filters = { a: input.accountId, t: [...input.types].sort(), s: input.startTime, e: input.endTime };
    const after = decodePageToken(input.pageToken, "transactions", filters);
    const conditions = ["account_id = $1"];
    const bind: unknown[] = [input.accountId];
    if (input.types.length > 0) {
      bind.push(input.types);
      conditions.push(`type = ANY($${bind.length}::text[])`);
    }
    if (input.startTime) {
      bind.push(input.startTime.toISOString());
      conditions.push(`created_at >= $${bind.length}`);
    }
    if (input.endTime) {
      bind.push(input.endTime.toISOString());
      conditions.push(`created_at < $${bind.length}`);
    }
    if (after) {
      const id = after[0];
      if (typeof id !== "string" || !/^\d+$/.test(id)) throw invalidField("page_token", "is not a valid page token for this request");
      bind.push(id);
      conditions.push(`id < $${bind.length}`);
    }
    bind.push(size! + 1);
    const rows = await this.sequelize.query<{
      id: string;
      account_id: string;
      type: TransactionType;
      amount: string;
      balance_after: string;
      description: string;
      metadata: JsonObject;
      payment_id: string | null;
      created_at: Date;
    }>(
      `SELECT id, account_id, type, amount, balance_after, description, metadata, payment_id, created_at
       FROM credit_transactions WHERE ${conditions.join(" AND ")} ORDER BY id DESC LIMIT $${bind.length}`,
      { bind, type: QueryTypes.SELECT },
    );
    const page = pageOf(rows, size!, (r) => [r.id], "transactions", filters);
    return {
      transactions: page.items.map((r) => ({
        id: r.id,
        accountId: r.account_id,
        type: r.type,
        amount: BigInt(r.amount),
        balanceAfter: BigInt(r.balance_after),
        description: r.description,
        metadata: r.metadata,
        paymentId: r.payment_id ?? "",
        createdAt: r.created_at,
      })),
      nextPageToken: page.nextPageToken,
    };
  }
}

/** A balance as callers see it: available never below zero. */
export function balanceView(accountId: string, balance: bigint, reserved: bigint, updatedAt: Date | undefined): BalanceView {
  const view: BalanceView = { accountId, balance, reserved, available: balance > reserved ? balance - reserved : 0n };
  if (updatedAt) view.updatedAt = updatedAt;
  return view;
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
  };
}

/** The description of a usage charge. */
export function describeUsage(operationType: string, relatedType: string, relatedId: string): string {
  const about = relatedType || relatedId ? ` (${[relatedType, relatedId].filter(Boolean).join(" ")})` : "";
  return `Usage: ${operationType}${about}`.slice(0, 255);
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
