/**
 * The AI model catalogue (seed: AIModelConfig) and its change history.
 */
import { DataTypes, Model, type CreationOptional, type InferAttributes, type InferCreationAttributes, type Sequelize } from "sequelize";

/**
 * One model with its capabilities; at most one default per model_type (unique
 * partial index). Its prices are versions (model_price_versions, see
 * src/domain/models/versions.ts).
 */
export class AIModelConfig extends Model<InferAttributes<AIModelConfig>, InferCreationAttributes<AIModelConfig>> {
  declare model_name: string;
  declare display_name: string;
  declare model_type: string;
  declare provider: string;
  declare context_window: number | null;
  declare max_output_tokens: number | null;
  declare valid_sizes: string[] | null;
  declare supports_json_mode: boolean;
  declare supports_vision: boolean;
  declare supports_function_calling: boolean;
  declare is_active: boolean;
  declare is_default: boolean;
  declare sort_order: number;
  declare description: string;
  declare release_date: string | null;
  declare deprecation_date: string | null;
  declare updated_by: string | null;
  declare created_at: CreationOptional<Date>;
  declare updated_at: CreationOptional<Date>;
}

/** One change of a model config, with who and the values before and after. */
export class AIModelConfigHistory extends Model<InferAttributes<AIModelConfigHistory>, InferCreationAttributes<AIModelConfigHistory>> {
  declare id: CreationOptional<string>;
  declare model_name: string;
  declare action: string;
  declare actor: string;
  declare before: Record<string, unknown> | null;
  declare after: Record<string, unknown> | null;
  declare created_at: CreationOptional<Date>;
}

export function initAIModelModels(sequelize: Sequelize) {
  const now = () => ({ type: DataTypes.DATE, allowNull: false, defaultValue: DataTypes.NOW });
  const flag = (def: boolean) => ({ type: DataTypes.BOOLEAN, allowNull: false, defaultValue: def });
  const AIModelConfigBound = class extends AIModelConfig {};
  AIModelConfigBound.init(
    {
      model_name: { type: DataTypes.STRING(255), primaryKey: true },
      display_name: { type: DataTypes.STRING(255), allowNull: false },
      model_type: { type: DataTypes.STRING(20), allowNull: false },
      provider: { type: DataTypes.STRING(50), allowNull: false },
      context_window: { type: DataTypes.INTEGER, allowNull: true },
      max_output_tokens: { type: DataTypes.INTEGER, allowNull: true },
      valid_sizes: { type: DataTypes.JSONB, allowNull: true },
      supports_json_mode: flag(false),
      supports_vision: flag(false),
      supports_function_calling: flag(false),
      is_active: flag(true),
      is_default: flag(false),
      sort_order: { type: DataTypes.INTEGER, allowNull: false, defaultValue: 0 },
      description: { type: DataTypes.TEXT, allowNull: false, defaultValue: "" },
      release_date: { type: DataTypes.DATEONLY, allowNull: true },
      deprecation_date: { type: DataTypes.DATEONLY, allowNull: true },
      updated_by: { type: DataTypes.STRING(255), allowNull: true },
      created_at: now(),
      updated_at: now(),
    },
    { sequelize, tableName: "ai_model_configs" },
  );
  const AIModelConfigHistoryBound = class extends AIModelConfigHistory {};
  AIModelConfigHistoryBound.init(
    {
      id: { type: DataTypes.BIGINT, primaryKey: true, autoIncrement: true },
      model_name: { type: DataTypes.STRING(255), allowNull: false },
      action: { type: DataTypes.STRING(50), allowNull: false },
      actor: { type: DataTypes.STRING(255), allowNull: false },
      before: { type: DataTypes.JSONB, allowNull: true },
      after: { type: DataTypes.JSONB, allowNull: true },
      created_at: now(),
    },
    { sequelize, tableName: "ai_model_config_history", updatedAt: false },
  );
  return { AIModelConfig: AIModelConfigBound, AIModelConfigHistory: AIModelConfigHistoryBound };
}
