/**
 * Every Sequelize model, bound to one Sequelize instance by initModels.
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

/** Binds every model class to `sequelize` (a model class serves one instance at a time). */
export function initModels(sequelize: Sequelize): void {
  initLedgerModels(sequelize);
  initPricingModels(sequelize);
  initInvoicingModels(sequelize);
  initPaymentMethodModels(sequelize);
  initAIModelModels(sequelize);
}
