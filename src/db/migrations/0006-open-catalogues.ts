/**
 * Open catalogues: a model may name any provider (PROVIDER_OTHER +
 * provider_name), not only the four the first schema listed. Operation types
 * were already rows (credit_cost_configs); CreateCostConfig adds them.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
ALTER TABLE ai_model_configs DROP CONSTRAINT ai_model_configs_provider_check;
ALTER TABLE ai_model_configs ADD CONSTRAINT ai_model_configs_provider_check CHECK (provider ~ '^[a-z][a-z0-9_-]{0,49}$');
ALTER TABLE credit_cost_configs ADD CONSTRAINT credit_cost_configs_operation_type_check CHECK (operation_type ~ '^[a-z][a-z0-9_]{0,49}$');
`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`
ALTER TABLE credit_cost_configs DROP CONSTRAINT credit_cost_configs_operation_type_check;
ALTER TABLE ai_model_configs DROP CONSTRAINT ai_model_configs_provider_check;
ALTER TABLE ai_model_configs ADD CONSTRAINT ai_model_configs_provider_check CHECK (provider IN ('openai','anthropic','runware','google'));
`);
};
