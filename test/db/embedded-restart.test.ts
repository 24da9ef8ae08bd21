/**
 * The embedded PostgreSQL restarts on the data directory it created, also in
 * the layout that needs the most care: the service running as root from a
 * checkout under a mode-700 parent (e.g. a clone in root's home), where the
 * default data directory is a folder under the system temp dir.
 */
import { expect } from "chai";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { EmbeddedPostgres, defaultDataDir } from "../../src/db/embedded.js";

describe("embedded PostgreSQL restarts", () => {
  it("starts, stops and starts again on the default data dir of a checkout under a mode-700 parent (as root)", async function () {
    if (process.getuid?.() !== 0) this.skip(); // the layout only differs for root
    this.timeout(120_000);
    const parent = mkdtempSync(path.join(os.tmpdir(), "billing-700-"));
    chmodSync(parent, 0o700);
    const checkout = path.join(parent, "checkout");
    mkdirSync(checkout);
    let dataDir = "";
    try {
      for (const run of [1, 2, 3]) {
        dataDir = defaultDataDir(checkout); // what every `npm start` computes
        const db = await EmbeddedPostgres.start({ dataDir });
        try {
          const c = new pg.Client({ connectionString: db.url() });
          await c.connect();
          if (run === 1) await c.query("CREATE TABLE restarts (n int)");
          await c.query("INSERT INTO restarts VALUES ($1)", [run]);
          const { rows } = await c.query("SELECT count(*)::int AS n FROM restarts");
          expect(rows[0].n, `rows after start ${run}`).to.equal(run);
          await c.end();
        } finally {
          await db.stop();
        }
      }
    } finally {
      rmSync(parent, { recursive: true, force: true });
      if (dataDir && existsSync(dataDir)) rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
