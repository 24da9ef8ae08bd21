/**
 * Every Sequelize model. `initModels` binds a fresh subclass of each model to
 * one Sequelize instance (Model.init binds a class to one instance, and the
 * tests run several instances in one process); domain code gets the classes
 * bound to its instance with `modelsOf(sequelize)`.
 */
import type { Sequelize } from "sequelize";
import { initAIModelModels } from "./ai-models.js";
import { initInvoicingModels } from "./invoicing.js";
import { initLedgerModels } from "./ledger.js";
import { initPaymentMethodModels } from "./payment-methods.js";
import { initPricingModels } from "./pricing.js";

export * from "./ai-models.js";
export * from "./invoicing.js";
export * from "./ledger.js";
export * from "./payment-methods.js";
export * from "./pricing.js";

export type Models = ReturnType<typeof initModels>;

const bound = new WeakMap<Sequelize, Models>();

/** Binds every model to `sequelize`; returns the bound classes. */
export function initModels(sequelize: Sequelize) {
  const models = {
    ...initLedgerModels(sequelize),
    ...initPricingModels(sequelize),
    ...initInvoicingModels(sequelize),
    ...initPaymentMethodModels(sequelize),
    ...initAIModelModels(sequelize),
  };
  bound.set(sequelize, models);
  return models;
}

/** The model classes bound to `sequelize`. */
export function modelsOf(sequelize: Sequelize): Models {
  const models = bound.get(sequelize);
  if (!models) throw new Error("models are not initialised for this Sequelize instance (use createSequelize)");
  return models;
}
