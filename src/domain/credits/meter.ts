/**
 * What the ledger reports about itself (credits moved, batches), without
 * knowing where it goes (src/metrics.ts implements it for Prometheus).
 */
export interface LedgerMeter {
  /** Credits that left or joined balances, counted once their transaction committed. */
  credits(kind: "granted" | "deducted" | "expired", amount: bigint): void;
  /** One coalesced batch: its size and how long each request waited for it to start. */
  batch(size: number, waitMs: number[]): void;
}

/** A meter that counts nothing. */
export const NO_METER: LedgerMeter = { credits: () => undefined, batch: () => undefined };
