/**
 * Start-up of the real service (`node --import tsx src/main.ts`) with bad
 * environments: every configuration problem is one JSON line naming its
 * variable and the exit code is 2 (several problems in one run are all
 * reported); MIGRATE=off refuses a database whose schema is behind (exit 1);
 * an unreachable database is retried for DATABASE_CONNECT_TIMEOUT_MS, then
 * exit 1.
 */
import { expect } from "chai";
import { QueryTypes } from "sequelize";
import { pendingMigrations } from "../../src/db/migrate.js";
import { freePort, sleep, spawnService, startOutdatedDatabase, type OutdatedDatabase, type ServiceProcess } from "./util.js";

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  ms: number;
  stdout: string;
  stderr: string;
  lines: Record<string, unknown>[];
  /** stdout lines that are not JSON objects. */
  nonJson: string[];
}

/** Runs the service with `env` to its exit (killed after `timeoutMs`). */
async function run(env: Record<string, string>, timeoutMs = 20_000): Promise<Run> {
  const svc = spawnService(env);
  const exit = await Promise.race([svc.exited, sleep(timeoutMs).then(() => undefined)]);
  if (!exit) {
    svc.kill();
    await svc.exited;
  }
  const stdout = svc.stdout();
  return {
    code: exit ? exit.code : null,
    signal: exit ? exit.signal : "SIGKILL",
    ms: (exit?.at ?? performance.now()) - svc.startedAt,
    stdout,
    stderr: svc.stderr(),
    lines: svc.jsonLines(),
    nonJson: stdout.split("\n").filter((l) => l.trim() !== "" && !l.trim().startsWith("{")),
  };
}

const show = (r: Run) => `exit ${r.code}${r.signal ? ` (${r.signal})` : ""} after ${Math.round(r.ms)} ms; stdout:\n${r.stdout}\nstderr:\n${r.stderr}`;

const DUP_TOKEN = "tok_ops_duplicate_7d1e";
const SPACED_TOKEN = "tok_ops spaced_91af";

describe("operations: start-up configuration and database checks (src/main.ts)", function () {
  this.timeout(60_000);
  let unreachableUrl = "";

  before(async () => {
    // A database nobody serves: if a check below were missing, start-up fails fast on it instead of starting an embedded one.
    unreachableUrl = `postgres://billing:pw@127.0.0.1:${await freePort()}/billing`;
  });

  describe("invalid variables: exit code 2 and one JSON line per problem naming the variable", () => {
    const cases: { name: string; env: Record<string, string>; variables: string[]; secret?: string }[] = [
      { name: "DATABASE_URL=notaurl", env: { DATABASE_URL: "notaurl" }, variables: ["DATABASE_URL"] },
      { name: "BILLING_API_KEYS with a duplicate token (admin=a,service=a)", env: { BILLING_API_KEYS: `admin=${DUP_TOKEN},service=${DUP_TOKEN}` }, variables: ["BILLING_API_KEYS"], secret: DUP_TOKEN },
      { name: "BILLING_API_KEYS with a token containing a space", env: { BILLING_API_KEYS: `service=${SPACED_TOKEN}` }, variables: ["BILLING_API_KEYS"], secret: "spaced_91af" },
      { name: "CORS_ORIGINS=https://x.example/ (trailing slash)", env: { CORS_ORIGINS: "https://x.example/" }, variables: ["CORS_ORIGINS"] },
      { name: "CORS_ORIGINS=not a url", env: { CORS_ORIGINS: "not a url" }, variables: ["CORS_ORIGINS"] },
      { name: "LOG_LEVEL=verbose", env: { LOG_LEVEL: "verbose" }, variables: ["LOG_LEVEL"] },
      { name: "MIGRATE=sometimes", env: { MIGRATE: "sometimes" }, variables: ["MIGRATE"] },
      { name: "METRICS_PORT=abc", env: { METRICS_PORT: "abc" }, variables: ["METRICS_PORT"] },
      { name: "HEADERS_TIMEOUT_MS=0", env: { HEADERS_TIMEOUT_MS: "0" }, variables: ["HEADERS_TIMEOUT_MS"] },
      { name: "IDLE_TIMEOUT_MS past a timer's 2^31-1 ms", env: { IDLE_TIMEOUT_MS: "3000000000" }, variables: ["IDLE_TIMEOUT_MS"] },
      { name: "METRICS_PORT equal to PORT", env: { PORT: "18123", METRICS_PORT: "18123" }, variables: ["METRICS_PORT"] },
      { name: "DEDUCT_BATCHES=0", env: { DEDUCT_BATCHES: "0" }, variables: ["DEDUCT_BATCHES"] },
      { name: "DEDUCT_BATCHES=65 (above 64)", env: { DEDUCT_BATCHES: "65" }, variables: ["DEDUCT_BATCHES"] },
      {
        name: "seven bad variables at once",
        env: {
          DATABASE_URL: "notaurl",
          BILLING_API_KEYS: `admin=${DUP_TOKEN},service=${DUP_TOKEN}`,
          CORS_ORIGINS: "https://x.example/",
          LOG_LEVEL: "verbose",
          MIGRATE: "sometimes",
          METRICS_PORT: "abc",
          HEADERS_TIMEOUT_MS: "0",
        },
        variables: ["DATABASE_URL", "BILLING_API_KEYS", "CORS_ORIGINS", "LOG_LEVEL", "MIGRATE", "METRICS_PORT", "HEADERS_TIMEOUT_MS"],
        secret: DUP_TOKEN,
      },
    ];
    const runs = new Map<string, Run>();

    before(async function () {
      this.timeout(90_000);
      // A few at a time: each is a node start-up.
      const queue = [...cases];
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          for (let c = queue.shift(); c; c = queue.shift()) {
            runs.set(c.name, await run({ PORT: "0", DATABASE_URL: unreachableUrl, DATABASE_CONNECT_TIMEOUT_MS: "300", ...c.env }));
          }
        }),
      );
    });

    for (const c of cases) {
      it(`${c.name}: exit 2, ${c.variables.length === 1 ? "one line" : `${c.variables.length} lines`} naming ${c.variables.join(", ")}`, () => {
        const r = runs.get(c.name)!;
        expect(r.code, show(r)).to.equal(2);
        expect(r.nonJson, "stdout lines that are not JSON").to.deep.equal([]);
        const problems = r.lines.filter((l) => l.msg === "invalid configuration");
        expect(problems.map((l) => l.variable).sort(), show(r)).to.deep.equal([...c.variables].sort());
        for (const p of problems) {
          expect(p.level, JSON.stringify(p)).to.equal("error");
          expect(p.problem, JSON.stringify(p)).to.be.a("string").and.not.equal("");
        }
        expect(r.lines.filter((l) => l.level === "error"), "error lines other than the problems").to.have.length(problems.length);
        // It stops before touching the database or listening.
        expect(r.lines.some((l) => l.msg === "billing listening" || /retrying|cannot start/.test(String(l.msg))), show(r)).to.equal(false);
        if (c.secret) expect(r.stdout + r.stderr, "the token is never printed").to.not.include(c.secret);
      });
    }
  });

  describe("the database", () => {
    let outdated: OutdatedDatabase | undefined;
    /** What this build has that the outdated database lacks (0005 and whatever came after it). */
    let pending: string[] = [];

    before(async function () {
      this.timeout(60_000);
      outdated = await startOutdatedDatabase("0004-currency-amounts");
      pending = await pendingMigrations(outdated.sequelize);
      expect(pending[0]).to.equal("0005-payment-providers");
    });

    after(async () => {
      await outdated?.stop();
    });

    it("MIGRATE=off over a schema that is behind (migrated to 0004): exit 1 naming the pending migration, schema untouched", async () => {
      const r = await run({ PORT: "0", DATABASE_URL: outdated!.url, MIGRATE: "off" });
      expect(r.code, show(r)).to.equal(1);
      const line = r.lines.find((l) => l.level === "error" && /pending migrations/.test(String(l.problem ?? l.msg)));
      expect(line, `a line mentioning pending migrations; ${show(r)}`).to.not.equal(undefined);
      for (const name of pending) expect(String(line!.problem ?? line!.msg)).to.include(name);
      expect(String(line!.problem ?? line!.msg)).to.not.include("0004-currency-amounts");
      expect(r.lines.some((l) => l.msg === "billing listening"), "it never listened").to.equal(false);
      expect(await pendingMigrations(outdated!.sequelize), "MIGRATE=off changed nothing").to.deep.equal(pending);
    });

    it("MIGRATE unset (auto) over the same database applies the pending migration, then serves and stops cleanly on SIGTERM", async () => {
      let svc: ServiceProcess | undefined;
      try {
        svc = spawnService({ PORT: "0", DATABASE_URL: outdated!.url, LOG_LEVEL: "info" });
        await svc.waitForLine((l) => l.msg === "billing listening", 30_000);
        const applied = svc.jsonLines().find((l) => l.msg === "migrations applied");
        expect(applied, svc.stdout()).to.not.equal(undefined);
        expect(applied!.applied).to.deep.equal(pending);
        expect(await pendingMigrations(outdated!.sequelize)).to.deep.equal([]);
        svc.child.kill("SIGTERM");
        const exit = await Promise.race([svc.exited, sleep(10_000).then(() => undefined)]);
        expect(exit, "exited within 10 s of SIGTERM").to.not.equal(undefined);
        expect(exit!.code, svc.stdout()).to.equal(0);
      } finally {
        svc?.kill();
      }
      const [row] = await outdated!.sequelize.query<{ n: string }>(`SELECT count(*) AS n FROM schema_migrations`, { type: QueryTypes.SELECT });
      expect(Number(row!.n)).to.equal(4 + pending.length);
    });

    it("DATABASE_URL on a closed port with DATABASE_CONNECT_TIMEOUT_MS=1500: retries with warnings, then exits 1 within 5 s with \"cannot start\"", async () => {
      const password = "pw_ops_secret_5b2c";
      const url = `postgres://billing:${password}@127.0.0.1:${await freePort()}/billing`;
      const r = await run({ PORT: "0", DATABASE_URL: url, DATABASE_CONNECT_TIMEOUT_MS: "1500", LOG_LEVEL: "info" }, 15_000);
      expect(r.code, show(r)).to.equal(1);
      expect(r.ms, `ms from spawn to exit; ${show(r)}`).to.be.below(5_000);
      const retries = r.lines.filter((l) => l.level === "warn" && /retrying/.test(String(l.msg)));
      expect(retries.length, `"retrying" warnings; ${show(r)}`).to.be.at.least(1);
      const fatal = r.lines.filter((l) => l.msg === "cannot start");
      expect(fatal, show(r)).to.have.length(1);
      expect(fatal[0]!.level).to.equal("error");
      expect(String(fatal[0]!.problem)).to.match(/cannot connect to the database/);
      // The retries come before the final line, and the password is never printed.
      expect(r.lines.indexOf(retries[0]!)).to.be.below(r.lines.indexOf(fatal[0]!));
      expect(r.stdout + r.stderr).to.not.include(password);
      expect(r.lines.some((l) => l.msg === "billing listening")).to.equal(false);
    });

    it("DATA_DIR where no folder can be created (under /proc): exits 1 at once with a line naming DATA_DIR (no endless spin)", async function () {
      if (process.platform !== "linux") this.skip();
      const r = await run({ PORT: "0", DATA_DIR: `/proc/billing-ops-${process.pid}/data`, LOG_LEVEL: "info" }, 10_000);
      expect(r.code, show(r)).to.equal(1);
      expect(r.ms, show(r)).to.be.below(5_000);
      const fatal = r.lines.filter((l) => l.msg === "cannot start");
      expect(fatal, show(r)).to.have.length(1);
      expect(String(fatal[0]!.problem)).to.match(/^DATA_DIR /);
    });
  });
});

describe("operations: configuration values that are valid", () => {
  it("accepts origins of app shells (capacitor://localhost, app://billing) and browser origins, and '*'", async () => {
    const { loadConfig } = await import("../../src/config.js");
    const config = loadConfig({ CORS_ORIGINS: "https://dash.example.com,http://localhost:5173,capacitor://localhost,app://billing" });
    expect(config.corsOrigins).to.deep.equal(["https://dash.example.com", "http://localhost:5173", "capacitor://localhost", "app://billing"]);
    expect(loadConfig({ CORS_ORIGINS: "*" }).corsOrigins).to.deep.equal(["*"]);
  });
});
