/**
 * Balance change notifications across server processes (LISTEN/NOTIFY).
 *
 * After a ledger transaction commits, the changed account is `announce`d;
 * announcements are batched into one `pg_notify` statement per tick, sent
 * outside the ledger's transactions, so ledger commits never queue on
 * PostgreSQL's notification lock. One dedicated connection per process
 * LISTENs and fans notices out to the local subscribers of each account; it
 * reconnects after a lost connection and then wakes every subscriber.
 * A process that dies between a commit and the next tick loses that notice;
 * watchers see the change with the next one.
 */
import pg from "pg";
import type { Sequelize } from "sequelize";
import type { Logger } from "../logger.js";
import { run } from "./sql.js";

const BALANCE_CHANNEL = "billing_balance";
const FLUSH_MS = 20;

type Listener = () => void;

/** Fans out balance-change notices to subscribers by account id (the BalanceSubscriptions of src/domain/credits/balance-watch.ts). */
export class BalanceNotifications {
  private client?: pg.Client;
  private connecting?: Promise<void>;
  private readonly listeners = new Map<string, Set<Listener>>();
  private closed = false;
  private retryTimer?: NodeJS.Timeout;
  private pending = new Set<string>();
  private flushTimer?: NodeJS.Timeout;

  constructor(
    private readonly sequelize: Sequelize,
    private readonly logger?: Logger,
  ) {}

  /** Calls `listener` after each committed change of `accountId`'s balance; returns the unsubscribe function. */
  async subscribe(accountId: string, listener: Listener): Promise<() => void> {
    await this.ensureListening();
    let set = this.listeners.get(accountId);
    if (!set) this.listeners.set(accountId, (set = new Set()));
    set.add(listener);
    return () => {
      set!.delete(listener);
      if (set!.size === 0) this.listeners.delete(accountId);
    };
  }

  /** Announces (after its commit) that `accountId`'s balance changed; batched per tick. */
  announce(accountId: string): void {
    this.pending.add(accountId);
    this.flushTimer ??= setTimeout(() => void this.flush(), FLUSH_MS);
  }

  private async flush(): Promise<void> {
    this.flushTimer = undefined;
    const accounts = [...this.pending];
    this.pending.clear();
    if (accounts.length === 0) return;
    try {
      await run(this.sequelize, `SELECT pg_notify('${BALANCE_CHANNEL}', a) FROM unnest($1::text[]) a`, [accounts]);
    } catch (err) {
      this.logger?.warn("balance notification failed", { error: err instanceof Error ? err.message : String(err), accounts: accounts.length });
    }
  }

  /** Stops listening (after sending what was announced). */
  async close(): Promise<void> {
    clearTimeout(this.flushTimer);
    await this.flush();
    this.closed = true;
    clearTimeout(this.retryTimer);
    const c = this.client;
    this.client = undefined;
    await c?.end().catch(() => undefined);
  }

  private ensureListening(): Promise<void> {
    if (this.client) return Promise.resolve();
    if (!this.connecting) {
      this.connecting = this.connect().finally(() => (this.connecting = undefined));
    }
    return this.connecting;
  }

  private async connect(): Promise<void> {
    const cfg = this.sequelize.config;
    const client = new pg.Client({
      host: cfg.host,
      port: cfg.port ? Number(cfg.port) : undefined,
      user: cfg.username,
      password: cfg.password ?? undefined,
      database: cfg.database,
      application_name: "billing-notifications",
      connectionTimeoutMillis: 5_000,
    });
    client.on("notification", (msg) => {
      if (msg.channel !== BALANCE_CHANNEL || !msg.payload) return;
      for (const listener of this.listeners.get(msg.payload) ?? []) listener();
    });
    client.on("error", (err) => {
      this.logger?.warn("balance notifications connection lost", { error: err.message });
      if (this.client === client) this.client = undefined;
      client.end().catch(() => undefined);
      this.scheduleReconnect();
    });
    await client.connect();
    await client.query(`LISTEN ${BALANCE_CHANNEL}`);
    if (this.closed) {
      await client.end();
      return;
    }
    this.client = client;
    // Wake everyone: changes may have been missed while disconnected.
    for (const set of this.listeners.values()) for (const l of set) l();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.listeners.size === 0 || this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.ensureListening().catch(() => this.scheduleReconnect());
    }, 1_000);
  }
}
