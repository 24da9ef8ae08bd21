/**
 * The migration that introduces credit lots (0003-credit-lots) over data
 * written before it: every account with a positive balance gets one PAID,
 * never-expiring lot holding exactly its balance, accounts at zero get none,
 * the old ledger stays consistent and later debits draw from the new lot.
 * Runs on its own throwaway embedded PostgreSQL, migrated in two steps.
 */
import { expect } from "chai";
import { QueryTypes, type Sequelize } from "sequelize";
import { createSequelize } from "../../src/db/database.js";
import { EmbeddedPostgres, temporaryDataDir } from "../../src/db/embedded.js";
import { migrate } from "../../src/db/migrate.js";

const RICH = "acct_pre_lots_rich";
const SMALL = "acct_pre_lots_small";
const ZERO = "acct_pre_lots_zero";

interface LotRow {
  id: string;
  account_id: string;
  category: string;
  state: string;
  amount: string;
  remaining: string;
  priority: number;
  effective_at: Date | null;
  expires_at: Date | null;
  payment_id: string | null;
  created_by: string;
}

describe("migration 0003-credit-lots over existing balances", function () {
  this.timeout(120_000);
  let db: EmbeddedPostgres | undefined;
  let sequelize: Sequelize | undefined;
  let appliedLater: string[] = [];

  const q = <T extends object>(sql: string, bind: unknown[] = []) => sequelize!.query<T>(sql, { bind, type: QueryTypes.SELECT });

  before(async () => {
    db = await EmbeddedPostgres.start({ dataDir: temporaryDataDir("billing-lots-migration-"), ephemeral: true });
    sequelize = createSequelize({ url: db.url(), poolMax: 5 });
    const applied = await migrate(sequelize, { to: "0002-deduct-batch-function" });
    expect(applied).to.deep.equal(["0001-initial-schema", "0002-deduct-batch-function"]);
    const tables = await q<{ n: string }>(`SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'credit_lots'`);
    expect(tables[0]!.n, "no credit_lots before 0003").to.equal("0");

    // Data as the service wrote it before lots: balance = Σ ledger amounts, balance_after the running sum.
    await sequelize.query(`
      INSERT INTO billing_accounts (account_id, balance) VALUES ('${RICH}', 120), ('${SMALL}', 1), ('${ZERO}', 0);
      INSERT INTO credit_transactions (account_id, type, amount, balance_after, description) VALUES
        ('${RICH}', 'purchase', 100, 100, 'package'),
        ('${RICH}', 'subscription', 50, 150, 'renewal'),
        ('${RICH}', 'deduction', -30, 120, 'usage'),
        ('${SMALL}', 'adjustment', 1, 1, 'goodwill'),
        ('${ZERO}', 'purchase', 10, 10, 'package'),
        ('${ZERO}', 'deduction', -10, 0, 'usage');
    `);
    // Then the remaining migrations (and the SQL function files), as a later deploy would.
    appliedLater = await migrate(sequelize);
  });

  after(async () => {
    await sequelize?.close();
    await db?.stop();
  });

  it("applies 0003 and the later migrations on the second run, nothing earlier", async () => {
    expect(appliedLater[0]).to.equal("0003-credit-lots");
    expect(appliedLater.every((name) => name >= "0003")).to.equal(true);
    expect(await migrate(sequelize!), "nothing left to apply").to.deep.equal([]);
  });

  it("gives each account with a positive balance one never-expiring PAID lot holding the balance, and a zero account none", async () => {
    const lots = await q<LotRow>(`SELECT * FROM credit_lots ORDER BY account_id`);
    expect(lots.map((l) => l.account_id)).to.deep.equal([RICH, SMALL]);
    for (const [account, balance] of [
      [RICH, "120"],
      [SMALL, "1"],
    ] as const) {
      const lot = lots.find((l) => l.account_id === account)!;
      expect(lot, account).to.include({ category: "paid", state: "active", amount: balance, remaining: balance, priority: 40, created_by: "migration" });
      expect(lot.expires_at, "never expires").to.equal(null);
      expect(lot.effective_at, "usable at once").to.equal(null);
      expect(lot.payment_id).to.equal(null);
    }
    // Balances are unchanged and still equal the ledger and the lots.
    const sums = await q<{ account_id: string; balance: string; ledger: string; lots: string }>(
      `SELECT a.account_id, a.balance,
              (SELECT COALESCE(sum(amount), 0) FROM credit_transactions t WHERE t.account_id = a.account_id) AS ledger,
              (SELECT COALESCE(sum(remaining), 0) FROM credit_lots l WHERE l.account_id = a.account_id) AS lots
       FROM billing_accounts a ORDER BY a.account_id`,
    );
    expect(sums.map((s) => [s.account_id, s.balance, s.ledger, s.lots])).to.deep.equal([
      [RICH, "120", "120", "120"],
      [SMALL, "1", "1", "1"],
      [ZERO, "0", "0", "0"],
    ]);
    const old = await q<{ allocations: unknown }>(`SELECT allocations FROM credit_transactions`);
    expect(old).to.have.length(6);
    for (const r of old) expect(r.allocations, "old rows have no allocations").to.deep.equal([]);
  });

  it("lets a later deduction through billing_debit draw from the carried-over lot", async () => {
    const [lot] = await q<LotRow>(`SELECT * FROM credit_lots WHERE account_id = $1`, [RICH]);
    const rows = await q<{ ord: number; outcome: string; detail: { allocations: { lot_id: string; amount: string }[]; balance_after: string; amount: string } }>(
      `SELECT * FROM billing_debit('DeductCredits', $1::jsonb)`,
      [JSON.stringify([{ account: RICH, credits: "5", type: "deduction", description: "x" }])],
    );
    expect(rows).to.have.length(1);
    expect(rows[0]).to.include({ ord: 1, outcome: "ok" });
    expect(rows[0]!.detail).to.include({ amount: "-5", balance_after: "115" });
    expect(rows[0]!.detail.allocations).to.deep.equal([{ lot_id: lot!.id, amount: "5" }]);

    const [after] = await q<LotRow>(`SELECT * FROM credit_lots WHERE account_id = $1`, [RICH]);
    expect(after).to.include({ remaining: "115", state: "active" });
    const ledger = await q<{ amount: string; balance_after: string; type: string; allocations: unknown }>(
      `SELECT amount, balance_after, type, allocations FROM credit_transactions WHERE account_id = $1 ORDER BY id`,
      [RICH],
    );
    expect(ledger.map((r) => [r.type, r.amount, r.balance_after])).to.deep.equal([
      ["purchase", "100", "100"],
      ["subscription", "50", "150"],
      ["deduction", "-30", "120"],
      ["deduction", "-5", "115"],
    ]);
    expect(ledger[3]!.allocations).to.deep.equal([{ lot_id: lot!.id, amount: "5" }]);
    const [account] = await q<{ balance: string }>(`SELECT balance FROM billing_accounts WHERE account_id = $1`, [RICH]);
    expect(account!.balance).to.equal("115");
  });

  it("refuses a deduction from the zero account, which has no lot, writing nothing", async () => {
    const rows = await q<{ outcome: string; detail: { available: string } }>(`SELECT * FROM billing_debit('DeductCredits', $1::jsonb)`, [
      JSON.stringify([{ account: ZERO, credits: "1", type: "deduction", description: "x" }]),
    ]);
    expect(rows.map((r) => [r.outcome, r.detail])).to.deep.equal([["insufficient", { available: "0" }]]);
    const [count] = await q<{ n: string }>(`SELECT count(*) AS n FROM credit_transactions WHERE account_id = $1`, [ZERO]);
    expect(count!.n).to.equal("2");
  });
});
