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
import type { Sequelize } from "sequelize";
import { accountsWithDueLots, emitExpiringSoon, listLots, lockLot, lotAccount, markLotVoided, type LotRow } from "../../db/credits/lots.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Violations, failedPrecondition, notFound, Reason } from "../errors.js";
import { runIdempotent } from "../idempotency.js";
import { pageOf, pageRequest } from "../pagination.js";
import { checkText, requireId, requireIdempotencyKey, requireUuid, truncateText } from "../validation.js";
import type { CreditLedger } from "./ledger.js";
import type { CreditLotView, LedgerEntry, LotCategory, LotState, TransactionType } from "./types.js";

/** Default burn-down priority per category (lower burns first). */
const DEFAULT_PRIORITY: Record<LotCategory, number> = { promotional: 10, plan_allowance: 20, adjustment: 30, paid: 40 };
const MAX_PRIORITY = 1000;

/** The terms of a new lot. */
export interface LotTerms {
  category: LotCategory;
  priority: number;
  effectiveAt?: Date;
  expiresAt?: Date;
}

/** The category a grant's lot gets when the caller names none. */
function categoryForGrant(type: TransactionType | undefined): LotCategory {
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

/** The domain view of a stored lot ("pending": active, but effective_at is ahead). */
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
    const filters = { a: input.accountId, c: [...input.categories].sort(), s: [...input.states].sort() };
    const paging = v.collect(() => pageRequest(input, "credit_lots", filters, ["timestamp", "uuid"]));
    v.throwIfAny();
    const { size, after } = paging!;
    // Lots due to expire are expired first, so that states and remaining are true.
    await this.ledger.expire([input.accountId]);
    const rows = await listLots(this.sequelize, input, after as [string, string] | undefined, size + 1);
    const page = pageOf(rows, size, (r) => [r.page_at, r.lot_id], "credit_lots", filters);
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
    const accountId = await lotAccount(this.sequelize, lotId!);
    if (accountId === undefined) throw notFound("credit lot", lotId!);
    return inTransaction(
      this.sequelize,
      async (t) =>
        (
          await runIdempotent(this.sequelize, t, { accountId, key: input.idempotencyKey, method: "VoidCreditLot", request: { ...input, lotId } }, async () => {
            await this.ledger.accountStateIn(t, accountId); // account lock; due lots expire first
            const lot = await lockLot(this.sequelize, t, accountId, lotId!);
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
            const voided = await markLotVoided(this.sequelize, t, accountId, lotId!);
            const out: { lot: CreditLotView; transaction?: LedgerEntry } = { lot: lotViewOf(voided) };
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
    const due = await accountsWithDueLots(this.sequelize, limit);
    await this.ledger.expire(due);
    return due;
  }

  /**
   * Writes one credit_lot.expiring_soon event for each active lot with
   * credits left that expires within `leadMs` (once per lot: the event is
   * deduplicated by lot id); returns how many were written.
   */
  warnExpiring(leadMs: number, limit = 500): Promise<number> {
    return emitExpiringSoon(this.sequelize, leadMs / 1000, limit);
  }
}
