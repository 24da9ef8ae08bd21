/**
 * Following a balance (WatchBalance): the balance now, then again after
 * each committed change of the account that alters balance, reserved or
 * available. Change notices come from a subscription (src/db/notifications.ts
 * implements it with LISTEN/NOTIFY across processes); a notice only says
 * "look again", so notices that change nothing a caller sees yield nothing,
 * and a burst of notices during one read costs one more read.
 */
import type { BalanceView } from "./types.js";

/** Where balance-change notices come from. */
export interface BalanceSubscriptions {
  /** Calls `listener` after each committed change of `accountId`'s balance or holds; resolves to the unsubscribe function. */
  subscribe(accountId: string, listener: () => void): Promise<() => void>;
}

/** What a watch reads the balance from (the ledger). */
export interface BalanceSource {
  getBalance(accountId: string): Promise<BalanceView>;
}

/**
 * Yields `accountId`'s balance at once and after every change of balance,
 * reserved or available, until `signal` aborts (then it returns).
 * Errors of the read (e.g. INVALID_ARGUMENT account_id) end the watch.
 */
export async function* watchBalance(source: BalanceSource, subscriptions: BalanceSubscriptions, accountId: string, signal: AbortSignal): AsyncGenerator<BalanceView> {
  let wake: (() => void) | undefined;
  let dirty = false;
  const unsubscribe = await subscriptions.subscribe(accountId, () => {
    dirty = true;
    wake?.();
  });
  const aborted = new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener("abort", () => resolve(), { once: true });
  });
  try {
    let last = "";
    while (!signal.aborted) {
      dirty = false;
      const balance = await source.getBalance(accountId);
      const fingerprint = `${balance.balance}/${balance.reserved}/${balance.available}`;
      if (fingerprint !== last) {
        last = fingerprint;
        yield balance;
      }
      // A notice that arrived during the read (or while the caller took the last answer) means read again now.
      if (!dirty) await Promise.race([new Promise<void>((resolve) => (wake = resolve)), aborted]);
      wake = undefined;
    }
  } finally {
    unsubscribe();
  }
}
