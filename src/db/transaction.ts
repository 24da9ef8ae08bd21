/**
 * The one way domain code opens a database transaction.
 *
 * READ COMMITTED with explicit row locks; serialization failures and
 * deadlocks are retried a few times; a caller deadline becomes a
 * `SET LOCAL statement_timeout`, so SQL stops when the caller gives up.
 */
import { type Sequelize, type Transaction } from "sequelize";

export interface TransactionOptions {
  /** Milliseconds the caller is still waiting; bounds every statement. */
  timeoutMs?: number;
}

const RETRYABLE = new Set(["40001", "40P01"]);
const MAX_STATEMENT_TIMEOUT_MS = 2_147_483_647;
const MAX_ATTEMPTS = 4;

/** Runs `work` in one transaction, committing on success and rolling back on any error. */
export function inTransaction<T>(sequelize: Sequelize, work: (t: Transaction) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
  return retryingConflicts(() =>
    sequelize.transaction(async (t) => {
      // statement_timeout takes at most 2^31-1 ms; a longer deadline (grpc-timeout allows years) needs none.
      if (options.timeoutMs !== undefined && options.timeoutMs > 0 && options.timeoutMs <= MAX_STATEMENT_TIMEOUT_MS) {
        await sequelize.query(`SET LOCAL statement_timeout = ${Math.max(1, Math.floor(options.timeoutMs))}`, { transaction: t });
      }
      return work(t);
    }),
  );
}

/**
 * Runs an atomic unit of work (a transaction, or one statement that is its
 * own transaction) again when PostgreSQL aborted it for a serialization
 * failure or a deadlock.
 */
export async function retryingConflicts<T>(attemptWork: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await attemptWork();
    } catch (err) {
      if (attempt < MAX_ATTEMPTS && RETRYABLE.has(sqlState(err) ?? "")) continue;
      throw err;
    }
  }
}

/** The SQLSTATE of a pg / Sequelize error, if any. */
export function sqlState(err: unknown): string | undefined {
  const e = err as { parent?: { code?: unknown }; original?: { code?: unknown }; code?: unknown } | null;
  const code = e?.parent?.code ?? e?.original?.code ?? e?.code;
  return typeof code === "string" ? code : undefined;
}
