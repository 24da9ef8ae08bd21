/**
 * Payment methods through the API: per-country configs with write-only,
 * encrypted secrets (and a scan that no response contains one), and account
 * payment methods with one default and unique display names.
 */
import { Code } from "@connectrpc/connect";
import { expect } from "chai";
import { PaymentMethod } from "../../gen/billing/v1/common_pb.js";
import { PaymentService } from "../../gen/billing/v1/payment_service_pb.js";
import { ACCOUNT_A, ACCOUNT_B, KNOWN_SECRETS, RECORDED_RESPONSES, TOKENS, badFields, client, expectError, harness, newAccount, responsesLeakingSecrets } from "../harness.js";

const admin = () => client(PaymentService, TOKENS.admin);
const SECRETS = { apiKey: "sk_live_SECRET_api_key_0001", apiSecret: "SECRET_api_secret_0002", webhookSecret: "whsec_SECRET_webhook_0003" };
Object.values(SECRETS).forEach((s) => KNOWN_SECRETS.add(s));

describe("PaymentService payment methods", () => {
  describe("per-country configs", () => {
    it("upserts a config with secrets and answers only has_* flags", async () => {
      const res = await admin().upsertPaymentMethodConfig({
        paymentMethodConfig: { countryCode: "in", paymentMethod: PaymentMethod.LOCAL_WALLET, isEnabled: true, displayName: "PayTM", instructions: "Send to the wallet below", walletType: "PayTM", walletId: "billing@paytm", sortOrder: 2 },
        secrets: SECRETS,
      });
      expect(res.paymentMethodConfig).to.include({ countryCode: "IN", hasApiKey: true, hasApiSecret: true, hasWebhookSecret: true, walletId: "billing@paytm" });
      await admin().upsertPaymentMethodConfig({
        paymentMethodConfig: { countryCode: "IN", paymentMethod: PaymentMethod.BANK_TRANSFER, isEnabled: true, displayName: "Bank transfer", bankName: "HDFC", accountNumber: "0001", swiftCode: "HDFCINBB", sortOrder: 1 },
      });
      await admin().upsertPaymentMethodConfig({ paymentMethodConfig: { countryCode: "IN", paymentMethod: PaymentMethod.MANUAL, isEnabled: false, displayName: "Off" } });
      const list = await client(PaymentService, TOKENS.accountA).listPaymentMethods({ countryCode: "IN" });
      expect(list.paymentMethods.map((m) => m.paymentMethod)).to.deep.equal([PaymentMethod.BANK_TRANSFER, PaymentMethod.LOCAL_WALLET]);
      expect(list.paymentMethods[1]).to.include({ instructions: "Send to the wallet below", hasApiSecret: true });
    });

    it("keeps stored secrets on an update without secrets, and clears them on request", async () => {
      const base = { countryCode: "GB", paymentMethod: PaymentMethod.STRIPE, isEnabled: true, displayName: "Card" };
      await admin().upsertPaymentMethodConfig({ paymentMethodConfig: base, secrets: { apiKey: SECRETS.apiKey } });
      const kept = await admin().upsertPaymentMethodConfig({ paymentMethodConfig: { ...base, displayName: "Cards" } });
      expect(kept.paymentMethodConfig).to.include({ hasApiKey: true, displayName: "Cards" });
      const cleared = await admin().upsertPaymentMethodConfig({ paymentMethodConfig: base, secrets: { clear: ["api_key"] } });
      expect(cleared.paymentMethodConfig?.hasApiKey).to.equal(false);
    });

    it("stores secrets encrypted, never in plain text", async () => {
      const rows = (await harness().sequelize.query(`SELECT row_to_json(c)::text AS j FROM payment_method_configs c`, { type: "SELECT" as never })) as unknown as { j: string }[];
      expect(rows.length).to.be.greaterThan(0);
      for (const r of rows) for (const s of KNOWN_SECRETS) expect(r.j).not.to.include(s);
      const [enc] = (await harness().sequelize.query(`SELECT api_secret_enc FROM payment_method_configs WHERE country_code = 'IN' AND payment_method = 'local_wallet'`, { type: "SELECT" as never })) as unknown as { api_secret_enc: string }[];
      expect(enc!.api_secret_enc).to.match(/^v1:/);
    });

    it("rejects bad configs, deletes, and keeps writes for admins", async () => {
      const err = await expectError(
        admin().upsertPaymentMethodConfig({ paymentMethodConfig: { countryCode: "USA", paymentMethod: PaymentMethod.UNSPECIFIED, webhookUrl: "ftp://x" }, secrets: { clear: ["password"] } }),
        Code.InvalidArgument,
      );
      expect(badFields(err)).to.have.members(["payment_method_config.country_code", "payment_method_config.payment_method", "payment_method_config.webhook_url", "secrets.clear[0]"]);
      await expectError(client(PaymentService, TOKENS.service).upsertPaymentMethodConfig({ paymentMethodConfig: { countryCode: "US", paymentMethod: PaymentMethod.MANUAL } }), Code.PermissionDenied);
      await admin().upsertPaymentMethodConfig({ paymentMethodConfig: { countryCode: "FR", paymentMethod: PaymentMethod.MANUAL, isEnabled: true } });
      await admin().deletePaymentMethodConfig({ countryCode: "FR", paymentMethod: PaymentMethod.MANUAL });
      await expectError(admin().deletePaymentMethodConfig({ countryCode: "FR", paymentMethod: PaymentMethod.MANUAL }), Code.NotFound);
      expect((await admin().listPaymentMethods({ countryCode: "FR" })).paymentMethods).to.deep.equal([]);
      await expectError(admin().listPaymentMethods({ countryCode: "France" }), Code.InvalidArgument);
    });

    it("no response of any RPC so far contains a stored secret", async () => {
      // The responses that could carry one, read again now, so this holds when the file runs alone too.
      const before = RECORDED_RESPONSES.length;
      await admin().listPaymentMethods({ countryCode: "IN" });
      expect(RECORDED_RESPONSES.length).to.be.greaterThan(before);
      expect(responsesLeakingSecrets()).to.deep.equal([]);
    });
  });

  describe("account payment methods", () => {
    it("creates, lists default first, updates, and deletes an account's own methods", async () => {
      const mine = client(PaymentService, TOKENS.accountB);
      const a = (await mine.createAccountPaymentMethod({ accountPaymentMethod: { accountId: ACCOUNT_B, type: PaymentMethod.BANK_TRANSFER, displayName: "Main bank", isEnabled: true, countryCode: "us" } })).accountPaymentMethod!;
      expect(a).to.include({ accountId: ACCOUNT_B, isDefault: false, countryCode: "US" });
      const b = (await mine.createAccountPaymentMethod({ accountPaymentMethod: { accountId: ACCOUNT_B, type: PaymentMethod.PAYPAL, displayName: "PayPal", isEnabled: true, isDefault: true, metadata: { email: "b@example.com" } } })).accountPaymentMethod!;
      const list = await mine.listAccountPaymentMethods({ accountId: ACCOUNT_B });
      expect(list.accountPaymentMethods[0]!.id).to.equal(b.id);
      const upd = (await mine.updateAccountPaymentMethod({ accountPaymentMethod: { id: a.id, displayName: "Savings" }, updateMask: { paths: ["display_name"] } })).accountPaymentMethod!;
      expect(upd).to.include({ displayName: "Savings", type: PaymentMethod.BANK_TRANSFER });
      await mine.deleteAccountPaymentMethod({ id: a.id });
      expect((await mine.listAccountPaymentMethods({ accountId: ACCOUNT_B })).accountPaymentMethods.map((m) => m.id)).to.not.include(a.id);
    });

    it("keeps one default per account, also under racing SetDefault calls", async () => {
      const account = ACCOUNT_A;
      const mine = client(PaymentService, TOKENS.accountA);
      const ids: string[] = [];
      for (let i = 0; i < 4; i++) ids.push((await mine.createAccountPaymentMethod({ accountPaymentMethod: { accountId: account, type: PaymentMethod.MANUAL, displayName: `m-${newAccount()}`, isEnabled: true } })).accountPaymentMethod!.id);
      const results = await Promise.allSettled(Array.from({ length: 16 }, (_, i) => mine.setDefaultAccountPaymentMethod({ id: ids[i % 4]! })));
      expect(results.filter((r) => r.status === "rejected")).to.deep.equal([]);
      const [row] = (await harness().sequelize.query(`SELECT count(*)::int AS n FROM account_payment_methods WHERE account_id = $1 AND is_default`, { bind: [account], type: "SELECT" as never })) as unknown as { n: number }[];
      expect(row!.n).to.equal(1);
    });

    it("rejects a duplicate display name, bad fields, and other accounts", async () => {
      const mine = client(PaymentService, TOKENS.accountA);
      const name = `dup-${newAccount()}`;
      await mine.createAccountPaymentMethod({ accountPaymentMethod: { accountId: ACCOUNT_A, type: PaymentMethod.MANUAL, displayName: name } });
      const dup = await expectError(mine.createAccountPaymentMethod({ accountPaymentMethod: { accountId: ACCOUNT_A, type: PaymentMethod.MANUAL, displayName: name } }), Code.AlreadyExists);
      expect(badFields(dup)).to.deep.equal(["account_payment_method.display_name"]);
      const bad = await expectError(mine.createAccountPaymentMethod({ accountPaymentMethod: { accountId: ACCOUNT_A, type: PaymentMethod.UNSPECIFIED, displayName: "", countryCode: "XYZ" } }), Code.InvalidArgument);
      expect(badFields(bad)).to.have.members(["account_payment_method.type", "account_payment_method.display_name", "account_payment_method.country_code"]);
      await expectError(mine.createAccountPaymentMethod({ accountPaymentMethod: { accountId: ACCOUNT_B, type: PaymentMethod.MANUAL, displayName: "x" } }), Code.PermissionDenied);
      await expectError(mine.listAccountPaymentMethods({ accountId: ACCOUNT_B }), Code.PermissionDenied);
      const theirs = (await client(PaymentService, TOKENS.accountB).listAccountPaymentMethods({ accountId: ACCOUNT_B })).accountPaymentMethods[0];
      if (theirs) {
        await expectError(mine.setDefaultAccountPaymentMethod({ id: theirs.id }), Code.PermissionDenied);
        await expectError(mine.deleteAccountPaymentMethod({ id: theirs.id }), Code.PermissionDenied);
      }
      await expectError(client(PaymentService, TOKENS.service).listAccountPaymentMethods({ accountId: ACCOUNT_A }), Code.PermissionDenied);
    });

    it("lets only admin keys point a method at a provider customer and card (account keys: PERMISSION_DENIED, nothing written)", async () => {
      const mine = client(PaymentService, TOKENS.accountA);
      const stored = async () =>
        (await harness().sequelize.query(`SELECT display_name, provider_customer_id, provider_payment_method_id FROM account_payment_methods WHERE account_id = $1 ORDER BY display_name`, {
          bind: [ACCOUNT_A],
          type: "SELECT" as never,
        })) as unknown as { display_name: string; provider_customer_id: string; provider_payment_method_id: string }[];
      const name = `card-${newAccount()}`;
      const card = { accountId: ACCOUNT_A, type: PaymentMethod.STRIPE, displayName: name, isEnabled: true };
      const before = await stored();
      await expectError(mine.createAccountPaymentMethod({ accountPaymentMethod: { ...card, providerCustomerId: "cus_someone_else" } }), Code.PermissionDenied, "PERMISSION_DENIED");
      await expectError(mine.createAccountPaymentMethod({ accountPaymentMethod: { ...card, providerPaymentMethodId: "pm_someone_else" } }), Code.PermissionDenied, "PERMISSION_DENIED");
      expect(await stored()).to.deep.equal(before);

      const own = (await mine.createAccountPaymentMethod({ accountPaymentMethod: card })).accountPaymentMethod!;
      await expectError(
        mine.updateAccountPaymentMethod({ accountPaymentMethod: { id: own.id, providerCustomerId: "cus_someone_else" }, updateMask: { paths: ["provider_customer_id"] } }),
        Code.PermissionDenied,
        "PERMISSION_DENIED",
      );
      await expectError(mine.updateAccountPaymentMethod({ accountPaymentMethod: { id: own.id, providerPaymentMethodId: "pm_someone_else" } }), Code.PermissionDenied, "PERMISSION_DENIED");
      // Clearing them through the mask is setting them too.
      await expectError(mine.updateAccountPaymentMethod({ accountPaymentMethod: { id: own.id }, updateMask: { paths: ["account_payment_method.provider_payment_method_id"] } }), Code.PermissionDenied, "PERMISSION_DENIED");
      expect((await stored()).find((r) => r.display_name === name)).to.deep.equal({ display_name: name, provider_customer_id: "", provider_payment_method_id: "" });
      // Other fields stay the account's own to change.
      expect((await mine.updateAccountPaymentMethod({ accountPaymentMethod: { id: own.id, isVerified: true }, updateMask: { paths: ["is_verified"] } })).accountPaymentMethod).to.include({ isVerified: true });

      // Admin keys may set them (service keys too, on the RPCs their role allows); CreateAccountPaymentMethod is admin-or-owner only.
      const admin = client(PaymentService, TOKENS.admin);
      const set = (await admin.updateAccountPaymentMethod({ accountPaymentMethod: { id: own.id, providerCustomerId: "cus_a_1", providerPaymentMethodId: "pm_a_1" } })).accountPaymentMethod!;
      expect(set).to.include({ providerCustomerId: "cus_a_1", providerPaymentMethodId: "pm_a_1" });
      const created = (await admin.createAccountPaymentMethod({ accountPaymentMethod: { ...card, displayName: `${name}-2`, providerCustomerId: "cus_a_2", providerPaymentMethodId: "pm_a_2" } })).accountPaymentMethod!;
      expect(created).to.include({ accountId: ACCOUNT_A, providerCustomerId: "cus_a_2", providerPaymentMethodId: "pm_a_2" });
    });
  });
});
