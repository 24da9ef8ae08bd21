/**
 * Credit lots: credits granted together, with a category, a burn-down
 * priority, an optional start (effective_at) and expiry, and their source.
 *
 * Rules (README.md, "Credit lots"; the debit side is billing_debit.sql):
 * - Every addition creates one lot (ledger.creditIn); the balance is the sum
 *   of the lots' remaining credits.
 * - Burn-down order: priority (lower first), then soonest expiry (never
 *   expiring last), then oldest. Default priorities by category:
 *   PROMOTIONAL 10, PLAN_ALLOWANCE 20, ADJUSTMENT 30, PAID 40; so paid
 *   credits, which never expire unless granted so, are spent last.
 * - A lot not yet effective counts in the balance but not in available.
 * - At expires_at what is left leaves through an EXPIRATION entry: lazily,
 *   before any read or debit of the account, and by the sweeper.
 * - An admin can void a lot: what is left leaves through a VOID entry.
 */
import { QueryTypes, type Sequelize } from "sequelize";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Violations, failedPrecondition, invalidField, notFound, Reason } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import { decodePageToken, pageOf, pageSize } from "../pagination.js";
import { checkText, requireId, requireIdempotencyKey, requireUuid, truncateText } from "../validation.js";
import type { CreditLedger } from "./ledger.js";
import type { CreditLotView, LedgerEntry, LotCategory, LotState, TransactionType } from "./types.js";

export const LOT_CATEGORIES: readonly LotCategory[] = ["paid", "promotional", "plan_allowance", "adjustment"];
export const LOT_STATES: readonly LotState[] = ["pending", "active", "exhausted", "expired", "voided"];

/** Default burn-down priority per category (lower burns first). */
export const DEFAULT_PRIORITY: Record<LotCategory, number> = { promotional: 10, plan_allowance: 20, adjustment: 30, paid: 40 };
export const MAX_PRIORITY = 1000;

/** The terms of a new lot. */
export interface LotTerms {
  category: LotCategory;
  priority: number;
  effectiveAt?: Date;
  expiresAt?: Date;
}

/** The category a grant's lot gets when the caller names none. */
export function categoryForGrant(type: TransactionType | undefined): LotCategory {
  switch (type) {
    case "purchase":
      return "paid";
    case "subscription":
      return "plan_allowance";
    default:
      return "adjustment";
  }
}

/** Complete, checked lot terms for a grant of `type`; INVALID_ARGUMENT naming the field otherwise. */
export function checkLotTerms(terms: Partial<LotTerms>, type: TransactionType | undefined): LotTerms {
  const v = new Violations();
  const category = terms.category ?? categoryForGrant(type);
  if (type === "purchase" && category !== "paid") v.add("category", "a PURCHASE grant is always PAID");
  const priority = terms.priority ?? DEFAULT_PRIORITY[category];
  if (!Number.isInteger(priority) || priority < 0 || priority > MAX_PRIORITY) v.add("priority", `must be from 0 to ${MAX_PRIORITY}`);
  if (terms.expiresAt && terms.expiresAt.getTime() <= Date.now()) v.add("expires_at", "must be in the future");
  if (terms.expiresAt && terms.effectiveAt && terms.expiresAt <= terms.effectiveAt) v.add("expires_at", "must be after effective_at");
  v.throwIfAny();
  const out: LotTerms = { category, priority };
  if (terms.effectiveAt) out.effectiveAt = terms.effectiveAt;
  if (terms.expiresAt) out.expiresAt = terms.expiresAt;
  return out;
}

/** The columns a lot is read with (RETURNING or SELECT), `pending` computed at the statement's time. */
export const LOT_COLUMNS = `id AS lot_id, account_id AS lot_account_id, category AS lot_category, state AS lot_state,
  amount AS lot_amount, remaining AS lot_remaining, priority AS lot_priority, effective_at AS lot_effective_at,
  expires_at AS lot_expires_at, payment_id AS lot_payment_id, package_id AS lot_package_id, created_by AS lot_created_by,
  description AS lot_description, transaction_id AS lot_transaction_id, created_at AS lot_created_at,
  (state = 'active' AND effective_at IS NOT NULL AND effective_at > now()) AS lot_pending`;

export interface LotRow {
  lot_id: string;
  lot_account_id: string;
  lot_category: LotCategory;
  lot_state: Exclude<LotState, "pending">;
  lot_amount: string;
  lot_remaining: string;
  lot_priority: number;
  lot_effective_at: Date | null;
  lot_expires_at: Date | null;
  lot_payment_id: string | null;
  lot_package_id: string | null;
  lot_created_by: string;
  lot_description: string;
  lot_transaction_id: string | null;
  lot_created_at: Date;
  lot_pending: boolean;
}

export function lotViewOf(r: LotRow): CreditLotView {
  const view: CreditLotView = {
    id: r.lot_id,
    accountId: r.lot_account_id,
    category: r.lot_category,
    state: r.lot_pending ? "pending" : r.lot_state,
    amount: BigInt(r.lot_amount),
    remaining: BigInt(r.lot_remaining),
    priority: r.lot_priority,
    paymentId: r.lot_payment_id ?? "",
    packageId: r.lot_package_id ?? "",
    createdBy: r.lot_created_by,
    description: r.lot_description,
    transactionId: r.lot_transaction_id ?? "",
    createdAt: r.lot_created_at,
  };
  if (r.lot_effective_at) view.effectiveAt = r.lot_effective_at;
  if (r.lot_expires_at) view.expiresAt = r.lot_expires_at;
  return view;
}

export interface ListLotsInput {
  accountId: string;
  categories: LotCategory[];
  states: LotState[];
  pageSize: number;
  pageToken: string;
}

export interface VoidLotInput {
  lotId: string;
  reason: string;
  idempotencyKey: string;
}

/** Lot reads, voids and the expiry sweeper. */
export class CreditLots {
  constructor(
    private readonly sequelize: Sequelize,
    private readonly ledger: CreditLedger,
  ) {}

  /** An account's lots, newest first (keyset on created_at, id). */
  async list(input: ListLotsInput): Promise<{ lots: CreditLotView[]; nextPageToken: string }> {
    const v = new Violations();
    v.collect(() => requireId(input.accountId, "account_id"));
    const size = v.collect(() => pageSize(input.pageSize));
    v.throwIfAny();
    const filters = { a: input.accountId, c: [...input.categories].sort(), s: [...input.states].sort() };
    const after = decodePageToken(input.pageToken, "credit_lots", filters);
    // Lots due to expire are expired first, so that states and remaining are true.
    await this.ledger.expire([input.accountId]);
    const conditions = ["account_id = $1"];
    const bind: unknown[] = [input.accountId];
    if (input.categories.length > 0) {
      bind.push(input.categories);
      conditions.push(`category = ANY($${bind.length}::text[])`);
    }
    if (input.states.length > 0) {
      const ors = input.states.map((s) => {
        if (s === "pending") return "(state = 'active' AND effective_at > now())";
        if (s === "active") return "(state = 'active' AND (effective_at IS NULL OR effective_at <= now()))";
        bind.push(s);
        return `state = $${bind.length}`;
      });
      conditions.push(`(${ors.join(" OR ")})`);
    }
    if (after) {
      const [at, id] = after;
      if (typeof at !== "string" || typeof id !== "string" || Number.isNaN(Date.parse(at))) throw invalidField("page_token", "is not a valid page token for this request");
      bind.push(at, id);
      conditions.push(`(created_at, id) < ($${bind.length - 1}::timestamptz, $${bind.length}::uuid)`);
    }
    bind.push(size! + 1);
    const rows = await this.sequelize.query<LotRow & { page_at: string }>(
      `SELECT ${LOT_COLUMNS}, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS page_at
       FROM credit_lots WHERE ${conditions.join(" AND ")} ORDER BY created_at DESC, id DESC LIMIT $${bind.length}`,
      { bind, type: QueryTypes.SELECT },
    );
    const page = pageOf(rows, size!, (r) => [r.page_at, r.lot_id], "credit_lots", filters);
    return { lots: page.items.map(lotViewOf), nextPageToken: page.nextPageToken };
  }

  /**
   * Admin: voids a lot; what is left leaves the balance through a VOID entry
   * (none when nothing is left). Only a PENDING or ACTIVE lot can be voided.
   * Idempotent by key.
   */
  async void(input: VoidLotInput, actor: string, options: TransactionOptions = {}): Promise<{ lot: CreditLotView; transaction?: LedgerEntry }> {
    const v = new Violations();
    const lotId = v.collect(() => requireUuid(input.lotId, "lot_id"));
    v.collect(() => checkText(input.reason, "reason"));
    v.collect(() => requireIdempotencyKey(input.idempotencyKey));
    v.throwIfAny();
    const [found] = await this.sequelize.query<{ account_id: string }>(`SELECT account_id FROM credit_lots WHERE id = $1`, { bind: [lotId], type: QueryTypes.SELECT });
    if (!found) throw notFound("credit lot", lotId!);
    const accountId = found.account_id;
    return inTransaction(
      this.sequelize,
      async (t) =>
        (
          await runIdempotent(this.sequelize, t, { accountId, key: input.idempotencyKey, method: "VoidCreditLot", request: { ...input, lotId } }, async () => {
            await this.ledger.accountStateIn(t, accountId); // account lock; due lots expire first
            const [lot] = await this.sequelize.query<LotRow>(`SELECT ${LOT_COLUMNS} FROM credit_lots WHERE account_id = $1 AND id = $2 FOR UPDATE`, {
              bind: [accountId, lotId],
              transaction: t,
              type: QueryTypes.SELECT,
            });
            if (!lot || lot.lot_state !== "active") {
              const state = lot?.lot_state ?? "missing";
              throw failedPrecondition(Reason.InvalidStateTransition, `credit lot ${lotId} is ${state} and cannot be voided`, { state });
            }
            const debit = await this.ledger.debitIn(
              t,
              {
                accountId,
                credits: 0n,
                type: "void",
                mode: "all",
                lotId: lotId!,
                description: truncateText(`Voided lot ${lotId}` + (input.reason ? `: ${input.reason}` : "")),
                metadata: { reason: input.reason, voided_by: actor },
              },
              { allowEmpty: true },
            );
            const [voided] = await this.sequelize.query<LotRow>(
              `UPDATE credit_lots SET state = 'voided', remaining = 0, closed_at = now() WHERE account_id = $1 AND id = $2 RETURNING ${LOT_COLUMNS}`,
              { bind: [accountId, lotId], transaction: t, type: QueryTypes.SELECT },
            );
            const out: { lot: CreditLotView; transaction?: LedgerEntry } = { lot: lotViewOf(voided!) };
            if (debit) out.transaction = debit.transaction;
            return out;
          })
        ).result,
      options,
    );
  }

  /**
   * Expires the due lots of up to `limit` accounts, each in its own
   * statement (one account lock at a time); returns the accounts changed.
   */
  async expireDue(limit = 100): Promise<string[]> {
    const due = await this.sequelize.query<{ account_id: string }>(
      `SELECT DISTINCT account_id FROM credit_lots WHERE state = 'active' AND remaining > 0 AND expires_at <= now() ORDER BY account_id LIMIT $1`,
      { bind: [limit], type: QueryTypes.SELECT },
    );
    await this.ledger.expire(due.map((d) => d.account_id));
    return due.map((d) => d.account_id);
  }

  /**
   * Writes one credit_lot.expiring_soon event for each active lot with
   * credits left that expires within `leadMs` (once per lot: the event is
   * deduplicated by lot id); returns how many were written.
   */
  async warnExpiring(leadMs: number, limit = 500): Promise<number> {
    const rows = await this.sequelize.query(
      `WITH due AS (
         SELECT account_id, id, remaining, expires_at FROM credit_lots
         WHERE state = 'active' AND remaining > 0 AND expires_at > now() AND expires_at <= now() + make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM billing_events e WHERE e.account_id = credit_lots.account_id
                             AND e.type = 'credit_lot.expiring_soon' AND e.dedupe_key = credit_lots.id::text)
         ORDER BY expires_at LIMIT $2)
       SELECT billing_emit(account_id, 'credit_lot.expiring_soon',
                jsonb_build_object('lot_id', id, 'remaining', remaining, 'expires_at', expires_at), id::text) FROM due`,
      { bind: [leadMs / 1000, limit], type: QueryTypes.SELECT },
    );
    return rows.length;
  }
}
