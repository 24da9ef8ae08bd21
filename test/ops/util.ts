/**
 * Helpers for the operations tests: the real service as a child process
 * (`node --import tsx src/main.ts`), a Prometheus text parser, a database
 * whose schema is behind this build, and free ports.
 */
import { spawn, type ChildProcess } from "node:child_process";
import net from "node:net";
import type { Sequelize } from "sequelize";
import { PROJECT_ROOT } from "../../src/db/connect.js";
import { createSequelize } from "../../src/db/database.js";
import { EmbeddedPostgres, temporaryDataDir } from "../../src/db/embedded.js";
import { migrate } from "../../src/db/migrate.js";

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A port nothing listens on (bound, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** A running (or finished) `node --import tsx src/main.ts`. */
export interface ServiceProcess {
  child: ChildProcess;
  /** Everything written to stdout so far. */
  stdout(): string;
  /** Everything written to stderr so far. */
  stderr(): string;
  /** The stdout lines that parse as JSON objects. */
  jsonLines(): Record<string, unknown>[];
  /** Resolves with the exit code (or signal name) and how long after `since` (default: spawn) it exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  /** Resolves with the first JSON line matching `pred`; rejects after `timeoutMs` or if the process exits first. */
  waitForLine(pred: (line: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>>;
  /** SIGKILLs the process if it is still running (cleanup). */
  kill(): void;
  startedAt: number;
}

/**
 * Spawns the service with exactly `env` (plus PATH/HOME/TMPDIR/LANG from
 * this process, nothing else), so the caller's DATABASE_URL etc. never leak in.
 */
export function spawnService(env: Record<string, string>): ServiceProcess {
  const base: Record<string, string> = {};
  for (const k of ["PATH", "HOME", "TMPDIR", "LANG", "TZ"]) if (process.env[k] !== undefined) base[k] = process.env[k]!;
  const startedAt = performance.now();
  const child = spawn(process.execPath, ["--import", "tsx", "src/main.ts"], { cwd: PROJECT_ROOT, env: { ...base, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  const listeners = new Set<() => void>();
  child.stdout!.setEncoding("utf8").on("data", (c: string) => {
    out += c;
    for (const l of listeners) l();
  });
  child.stderr!.setEncoding("utf8").on("data", (c: string) => (err += c));
  let exitedFlag = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) => {
    child.once("exit", (code, signal) => {
      exitedFlag = true;
      const at = performance.now();
      // Let the pipes drain before anyone reads the output.
      let pending = 2;
      const done = () => --pending === 0 && (resolve({ code, signal, at }), listeners.forEach((l) => l()));
      if (child.stdout!.readableEnded) done();
      else child.stdout!.once("end", done).once("close", done);
      if (child.stderr!.readableEnded) done();
      else child.stderr!.once("end", done).once("close", done);
    });
  });
  const jsonLines = () =>
    out
      .split("\n")
      .filter((l) => l.trim() !== "")
      .flatMap((l) => {
        try {
          const v = JSON.parse(l) as unknown;
          return v && typeof v === "object" ? [v as Record<string, unknown>] : [];
        } catch {
          return [];
        }
      });
  return {
    child,
    startedAt,
    stdout: () => out,
    stderr: () => err,
    jsonLines,
    exited,
    waitForLine(pred, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const hit = jsonLines().find(pred);
          if (hit) {
            cleanup();
            resolve(hit);
          } else if (exitedFlag) {
            cleanup();
            reject(new Error(`the service exited before the expected line; stdout:\n${out}\nstderr:\n${err}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`no expected line within ${timeoutMs} ms; stdout:\n${out}\nstderr:\n${err}`));
        }, timeoutMs);
        const cleanup = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  };
}

/** One sample of the Prometheus text format. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition (comments skipped). */
export function parsePrometheus(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
    for (let l; (l = re.exec(m[2] ?? "")); ) labels[l[1]!] = l[2]!.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    const raw = m[3]!;
    samples.push({ name: m[1]!, labels, value: raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw) });
  }
  return samples;
}

/** The value of the sample `name` whose labels include `labels` (0 when absent), summed over matches. */
export function sampleValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/** A throwaway embedded PostgreSQL whose schema stops at `to` (behind this build). */
export interface OutdatedDatabase {
  db: EmbeddedPostgres;
  sequelize: Sequelize;
  url: string;
  stop(): Promise<void>;
}

export async function startOutdatedDatabase(to = "0004-currency-amounts"): Promise<OutdatedDatabase> {
  const db = await EmbeddedPostgres.start({ dataDir: temporaryDataDir("billing-ops-outdated-"), ephemeral: true });
  const sequelize = createSequelize({ url: db.url(), poolMax: 5 });
  try {
    await migrate(sequelize, { to });
  } catch (err) {
    await sequelize.close().catch(() => undefined);
    await db.stop();
    throw err;
  }
  return {
    db,
    sequelize,
    url: db.url(),
    async stop() {
      await sequelize.close().catch(() => undefined);
      await db.stop();
    },
  };
}
