/**
 * Coalesced deductions: concurrent DeductCredits calls (same account or many)
 * are applied in one database transaction — one lock per account, a few
 * statements for the whole batch — and each caller is answered only after
 * that transaction commits.
 *
 * Semantics are those of a single deduction, per request:
 * - its own ledger row with the right balance_after, its own usage log, its
 *   own idempotency record (claimed before the effect, stored with it);
 * - INSUFFICIENT_CREDITS fails only the requests that no longer fit, in
 *   arrival order, and stores nothing for them;
 * - a request whose idempotency key is already taken (a replay, a racing
 *   retry, or a reused key) is not part of the batch: after the batch
 *   commits it goes through the single-request path, which replays the
 *   stored response or answers ALREADY_EXISTS.
 * Accounts are locked in account_id order, so batches of several processes
 * on one database never deadlock one another.
 *
 * Scheduling: a request starts a batch at once when fewer than MAX_IN_FLIGHT
 * batches are running; otherwise it queues, and the next batch takes
 * everything queued (at most MAX_BATCH). An idle service adds no latency.
 */
import { QueryTypes, type Sequelize, type Transaction } from "sequelize";
import { inTransaction } from "../../db/transaction.js";
import { BillingError, Reason } from "../errors.js";
import { encodeStored } from "../idempotency.js";
import type { BalanceView, DeductResult, JsonObject, UsageRecord } from "./types.js";

/** One priced, validated deduction waiting for its batch. */
export interface DeductionJob extends UsageRecord {
  accountId: string;
  credits: bigint;
  description: string;
  metadata: JsonObject;
  idempotencyKey: string;
  method: string;
  requestHash: string;
}

interface Pending {
  job: DeductionJob;
  resolve: (r: DeductResult) => void;
  reject: (e: unknown) => void;
}

const MAX_BATCH = 256;
const MAX_IN_FLIGHT = 4;

/** Applies queued deductions in shared transactions. */
export class DeductionBatcher {
  private queue: Pending[] = [];
  private inFlight = 0;

  constructor(
    private readonly sequelize: Sequelize,
    /** The single-request path, for requests whose key was already taken. */
    private readonly single: (job: DeductionJob) => Promise<DeductResult>,
    private readonly announce: (t: Transaction, accountId: string) => void,
  ) {}

  /** Queues a deduction; resolves after the commit that wrote it. */
  submit(job: DeductionJob): Promise<DeductResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ job, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.inFlight < MAX_IN_FLIGHT && this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH);
      this.inFlight++;
      this.run(batch).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }

  private async run(batch: Pending[]): Promise<void> {
    let outcome: { done: Map<Pending, DeductResult>; insufficient: Map<Pending, BillingError>; taken: Pending[] };
    try {
      outcome = await inTransaction(this.sequelize, (t) => this.apply(t, batch));
    } catch (err) {
      for (const p of batch) p.reject(err);
      return;
    }
    for (const [p, r] of outcome.done) p.resolve(r);
    for (const [p, e] of outcome.insufficient) p.reject(e);
    // Keys already taken: replay or ALREADY_EXISTS through the single path, now that this batch is durable.
    for (const p of outcome.taken) this.single(p.job).then(p.resolve, p.reject);
  }

  private async apply(t: Transaction, batch: Pending[]) {
    const q = <T extends object>(sql: string, bind: unknown[]) => this.sequelize.query<T>(sql, { bind, transaction: t, type: QueryTypes.SELECT });
    const done = new Map<Pending, DeductResult>();
    const insufficient = new Map<Pending, BillingError>();

    // 1. Claim every idempotency key; the ones not claimed are taken already.
    const claimed = await q<{ account_id: string; key: string }>(
      `INSERT INTO idempotency_keys (account_id, key, method, request_hash, response)
       SELECT a, k, m, h, 'null'::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(a, k, m, h)
       ON CONFLICT (account_id, key) DO NOTHING RETURNING account_id, key`,
      [batch.map((p) => p.job.accountId), batch.map((p) => p.job.idempotencyKey), batch.map((p) => p.job.method), batch.map((p) => p.job.requestHash)],
    );
    const claimedSet = new Set(claimed.map((c) => `${c.account_id}\u0000${c.key}`));
    const mine: Pending[] = [];
    const taken: Pending[] = [];
    const seen = new Set<string>();
    for (const p of batch) {
      const id = `${p.job.accountId}\u0000${p.job.idempotencyKey}`;
      if (claimedSet.has(id) && !seen.has(id)) mine.push(p);
      else taken.push(p);
      seen.add(id);
    }
    if (mine.length === 0) return { done, insufficient, taken };

    // 2. Lock the accounts (in a fixed order), then read their open holds.
    const accountIds = [...new Set(mine.map((p) => p.job.accountId))].sort();
    const locked = await q<{ account_id: string; balance: string }>(
      `SELECT account_id, balance FROM billing_accounts WHERE account_id = ANY($1::text[]) ORDER BY account_id FOR UPDATE`,
      [accountIds],
    );
    const holds = await q<{ account_id: string; reserved: string }>(
      `SELECT account_id, SUM(credits)::bigint AS reserved FROM credit_reservations
       WHERE account_id = ANY($1::text[]) AND status = 'active' AND expires_at > now() GROUP BY account_id`,
      [accountIds],
    );
    const balance = new Map(locked.map((r) => [r.account_id, BigInt(r.balance)]));
    const reserved = new Map(holds.map((r) => [r.account_id, BigInt(r.reserved)]));

    // 3. Decide in arrival order: each request either fits what is left, or fails alone.
    const accepted: { p: Pending; balanceAfter: bigint }[] = [];
    for (const p of mine) {
      const b = balance.get(p.job.accountId);
      const available = b === undefined ? 0n : b - (reserved.get(p.job.accountId) ?? 0n);
      if (b !== undefined && available >= p.job.credits) {
        balance.set(p.job.accountId, b - p.job.credits);
        accepted.push({ p, balanceAfter: b - p.job.credits });
      } else {
        const avail = available < 0n ? 0n : available;
        insufficient.set(
          p,
          new BillingError("failed_precondition", Reason.InsufficientCredits, `insufficient credits: ${p.job.credits} required, ${avail} available`, [], {
            required: p.job.credits.toString(),
            available: avail.toString(),
            account_id: p.job.accountId,
          }),
        );
      }
    }
    if (insufficient.size > 0) {
      // Failed requests store nothing under their keys.
      const failed = [...insufficient.keys()];
      await q(`DELETE FROM idempotency_keys k USING unnest($1::text[], $2::text[]) AS x(a, key) WHERE k.account_id = x.a AND k.key = x.key RETURNING 1`, [
        failed.map((p) => p.job.accountId),
        failed.map((p) => p.job.idempotencyKey),
      ]);
    }
    if (accepted.length === 0) return { done, insufficient, taken };

    // 4. One balance update, one insert of ledger rows and usage logs for the batch.
    const changed = [...new Set(accepted.map((a) => a.p.job.accountId))];
    const updated = await q<{ account_id: string; updated_at: Date }>(
      `UPDATE billing_accounts a SET balance = v.b, updated_at = now() FROM unnest($1::text[], $2::bigint[]) AS v(id, b)
       WHERE a.account_id = v.id RETURNING a.account_id, a.updated_at`,
      [changed, changed.map((id) => balance.get(id)!.toString())],
    );
    const updatedAt = new Map(updated.map((u) => [u.account_id, u.updated_at]));
    const j = accepted.map((a) => a.p.job);
    const rows = await q<{ tx_id: string; account_id: string; balance_after: string; created_at: Date; log_id: string }>(
      `WITH input AS (
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::numeric[], $8::text[], $9::bigint[], $10::bigint[], $11::text[], $12::text[])
           WITH ORDINALITY AS i(account_id, credits, balance_after, description, metadata, op, cost, model, tin, tout, rtype, rid, ord)),
       tx AS (
         INSERT INTO credit_transactions (account_id, type, amount, balance_after, description, metadata)
         SELECT account_id, 'deduction', -credits, balance_after, description, metadata::jsonb FROM input ORDER BY ord
         RETURNING id, account_id, balance_after, created_at),
       log AS (
         INSERT INTO credit_usage_logs (account_id, transaction_id, operation_type, credits_used, cost_usd, model_used,
                                        tokens_input, tokens_output, related_object_type, related_object_id, metadata, created_at)
         SELECT i.account_id, tx.id, i.op, i.credits, i.cost, i.model, i.tin, i.tout, i.rtype, i.rid, i.metadata::jsonb, tx.created_at
         FROM input i JOIN tx ON tx.account_id = i.account_id AND tx.balance_after = i.balance_after ORDER BY i.ord
         RETURNING id, transaction_id)
       SELECT tx.id AS tx_id, tx.account_id, tx.balance_after, tx.created_at, log.id AS log_id FROM tx JOIN log ON log.transaction_id = tx.id`,
      [
        j.map((x) => x.accountId),
        j.map((x) => x.credits.toString()),
        accepted.map((a) => a.balanceAfter.toString()),
        j.map((x) => x.description),
        j.map((x) => JSON.stringify(x.metadata)),
        j.map((x) => x.operationType),
        j.map((x) => x.costUsd || null),
        j.map((x) => x.model),
        j.map((x) => x.tokensInput.toString()),
        j.map((x) => x.tokensOutput.toString()),
        j.map((x) => x.relatedObjectType),
        j.map((x) => x.relatedObjectId),
      ],
    );
    // Within a batch an account's balance_after values strictly decrease, so (account, balance_after) names one request.
    const written = new Map(rows.map((r) => [`${r.account_id}\u0000${r.balance_after}`, r]));
    for (const { p, balanceAfter } of accepted) {
      const job = p.job;
      const r = written.get(`${job.accountId}\u0000${balanceAfter}`)!;
      const view: BalanceView = {
        accountId: job.accountId,
        balance: balanceAfter,
        reserved: reserved.get(job.accountId) ?? 0n,
        available: balanceAfter - (reserved.get(job.accountId) ?? 0n) > 0n ? balanceAfter - (reserved.get(job.accountId) ?? 0n) : 0n,
        updatedAt: updatedAt.get(job.accountId)!,
      };
      done.set(p, {
        transaction: {
          id: r.tx_id,
          accountId: job.accountId,
          type: "deduction",
          amount: -job.credits,
          balanceAfter,
          description: job.description,
          metadata: job.metadata,
          paymentId: "",
          createdAt: r.created_at,
        },
        usageLog: {
          id: r.log_id,
          accountId: job.accountId,
          operationType: job.operationType,
          creditsUsed: job.credits,
          costUsd: job.costUsd,
          modelUsed: job.model,
          tokensInput: job.tokensInput,
          tokensOutput: job.tokensOutput,
          relatedObjectType: job.relatedObjectType,
          relatedObjectId: job.relatedObjectId,
          metadata: job.metadata,
          createdAt: r.created_at,
        },
        balance: view,
      });
    }

    // 5. Store every response under its key, in this same transaction.
    const stored = [...done.entries()];
    await q(
      `UPDATE idempotency_keys k SET response = x.r::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS x(a, key, r)
       WHERE k.account_id = x.a AND k.key = x.key RETURNING 1`,
      [stored.map(([p]) => p.job.accountId), stored.map(([p]) => p.job.idempotencyKey), stored.map(([, r]) => encodeStored(r))],
    );
    for (const id of changed) this.announce(t, id);
    return { done, insufficient, taken };
  }
}
