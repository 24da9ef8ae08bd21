/**
 * Low-balance thresholds. The rule itself (balance.low once per downward
 * crossing, balance.depleted at zero) lives in the balance trigger of
 * src/db/functions/billing_events.sql, so single and coalesced deductions,
 * expiries and refunds all detect crossings in their own transaction, with
 * no extra round trip. This module keeps the thresholds, and with them the
 * account's watch bounds (billing_rewatch), in one transaction.
 */
import type { Sequelize } from "sequelize";
import { replaceThresholds, thresholdsOf } from "../../db/automation/balance-thresholds.js";
import { lockAccountWatch, rewatch } from "../../db/automation/watch.js";
import { inTransaction, type TransactionOptions } from "../../db/transaction.js";
import { Violations } from "../errors.js";
import { requireId } from "../validation.js";

const MAX_THRESHOLDS = 10;

export class BalanceAlerts {
  constructor(private readonly sequelize: Sequelize) {}

  /** The account's thresholds, ascending. */
  async get(accountId: string): Promise<bigint[]> {
    requireId(accountId, "account_id");
    return thresholdsOf(this.sequelize, accountId);
  }

  /** Replaces the account's thresholds; returns them ascending. */
  async set(accountId: string, thresholds: bigint[], options: TransactionOptions = {}): Promise<bigint[]> {
    const v = new Violations();
    v.collect(() => requireId(accountId, "account_id"));
    if (thresholds.length > MAX_THRESHOLDS) v.add("thresholds", `must hold at most ${MAX_THRESHOLDS} thresholds`);
    const seen = new Set<bigint>();
    thresholds.forEach((t, i) => {
      if (t <= 0n) v.add(`thresholds[${i}]`, "must be greater than zero");
      else if (seen.has(t)) v.add(`thresholds[${i}]`, "is repeated");
      seen.add(t);
    });
    v.throwIfAny();
    const sorted = [...seen].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    await inTransaction(
      this.sequelize,
      async (t) => {
        // The account row first: concurrent changes of what it watches queue here (billing_events.sql).
        await lockAccountWatch(this.sequelize, t, accountId);
        await replaceThresholds(this.sequelize, t, accountId, sorted);
        await rewatch(this.sequelize, t, accountId);
      },
      options,
    );
    return sorted;
  }
}
