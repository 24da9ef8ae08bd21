/**
 * Issue 19: every deduction writes one usage log, and each of its indexes is
 * one more insert per deduction. credit_usage_logs_account_operation
 * (account_id, operation_type) is a prefix of
 * credit_usage_logs_account_operation_created (account_id, operation_type,
 * created_at), which serves every query it served; it goes.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`DROP INDEX IF EXISTS credit_usage_logs_account_operation`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`CREATE INDEX IF NOT EXISTS credit_usage_logs_account_operation ON credit_usage_logs (account_id, operation_type)`);
};
