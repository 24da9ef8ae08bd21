/**
 * The migration that introduces price versions (0009-price-versions) over
 * data written before it: each model and operation type gets a version per
 * recorded price change, the first from its creation with the prices before
 * the first change, and the price columns leave the catalogue tables. Runs
 * on its own throwaway embedded PostgreSQL, migrated in two steps.
 */
import { expect } from "chai";
import { QueryTypes, type Sequelize } from "sequelize";
import { createSequelize } from "../../src/db/database.js";
import { EmbeddedPostgres, temporaryDataDir } from "../../src/db/embedded.js";
import { migrate } from "../../src/db/migrate.js";

describe("migration 0009-price-versions over existing catalogues", function () {
  this.timeout(120_000);
  let db: EmbeddedPostgres | undefined;
  let sequelize: Sequelize | undefined;
  const q = <T extends object>(sql: string, bind: unknown[] = []) => sequelize!.query<T>(sql, { bind, type: QueryTypes.SELECT });

  before(async () => {
    db = await EmbeddedPostgres.start({ dataDir: temporaryDataDir("billing-versions-migration-"), ephemeral: true });
    sequelize = createSequelize({ url: db.url(), poolMax: 5 });
    await migrate(sequelize, { to: "0008-events" });
    // A model created two days ago whose input price changed yesterday, and one never changed.
    await sequelize.query(`
      INSERT INTO ai_model_configs (model_name, display_name, model_type, provider, input_cost_per_1m, output_cost_per_1m, created_at, updated_at)
      VALUES ('old-text', 'Old', 'text', 'openai', 2.0000, 3.0000, now() - interval '2 days', now() - interval '1 day'),
             ('old-steady', 'Steady', 'text', 'openai', 0.5000, 0.6000, now() - interval '2 days', now() - interval '2 days');
      INSERT INTO ai_model_config_history (model_name, action, actor, before, after, created_at) VALUES
        ('old-text', 'create', 'admin', NULL, '{"input_cost_per_1m":"1.0000","output_cost_per_1m":"3.0000","cost_per_image":""}', now() - interval '2 days'),
        ('old-text', 'update', 'ops-ana', '{"input_cost_per_1m":"1.0000","output_cost_per_1m":"3.0000","cost_per_image":""}',
                                          '{"input_cost_per_1m":"2.0000","output_cost_per_1m":"3.0000","cost_per_image":""}', now() - interval '1 day');
      UPDATE credit_cost_configs SET created_at = now() - interval '2 days';
      UPDATE credit_cost_configs SET tokens_per_credit = 250, previous_tokens_per_credit = 100 WHERE operation_type = 'reparse';
      INSERT INTO credit_cost_config_history (operation_type, action, actor, before, after, created_at) VALUES
        ('reparse', 'update', 'ops-ana', '{"tokens_per_credit":100,"min_credits":1,"price_per_credit_usd":"0.0100"}',
                                         '{"tokens_per_credit":250,"min_credits":1,"price_per_credit_usd":"0.0100"}', now() - interval '1 day');
    `);
    expect(await migrate(sequelize)).to.include("0009-price-versions");
  });

  after(async () => {
    await sequelize?.close();
    await db?.stop();
  });

  it("gives a model one version per recorded price change, the first from its creation", async () => {
    const rows = await q<{ model_name: string; input_cost_per_1m: string; created_by: string; from_days: number }>(
      `SELECT model_name, input_cost_per_1m, created_by, round(extract(epoch FROM now() - effective_from) / 86400)::int AS from_days
       FROM model_price_versions ORDER BY model_name, effective_from`,
    );
    expect(rows).to.deep.equal([
      { model_name: "old-steady", input_cost_per_1m: "0.5000", created_by: "migration", from_days: 2 },
      { model_name: "old-text", input_cost_per_1m: "1.0000", created_by: "migration", from_days: 2 },
      { model_name: "old-text", input_cost_per_1m: "2.0000", created_by: "ops-ana", from_days: 1 },
    ]);
  });

  it("gives each operation type its versions, and the price columns leave the catalogue tables", async () => {
    const reparse = await q<{ tokens_per_credit: number }>(`SELECT tokens_per_credit FROM cost_config_versions WHERE operation_type = 'reparse' ORDER BY effective_from`);
    expect(reparse.map((r) => r.tokens_per_credit)).to.deep.equal([100, 250]);
    const counts = await q<{ n: number }>(`SELECT count(*)::int AS n FROM cost_config_versions GROUP BY operation_type HAVING operation_type <> 'reparse'`);
    expect(counts.every((c) => c.n === 1)).to.equal(true);
    const columns = await q<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns WHERE table_name IN ('ai_model_configs', 'credit_cost_configs')
       AND column_name IN ('input_cost_per_1m', 'output_cost_per_1m', 'cost_per_image', 'tokens_per_credit', 'min_credits', 'price_per_credit_usd', 'previous_tokens_per_credit')`,
    );
    expect(columns).to.deep.equal([]);
  });
});
