/**
 * AI operation types. They are data: each is a row of credit_cost_configs
 * (its pricing), created by admins with CreateCostConfig; the first
 * migration creates the ten the service started with (README.md, "The
 * credit model"). Here only the shape of a name and the legacy aliases
 * (ideas, content, images), which are accepted on input and stored as
 * their modern names; whether an operation exists is the pricing
 * configuration's to say (pricing.ts).
 */
import { invalidField } from "../errors.js";

/** An operation type's name (the key of its cost config). */
export type OperationType = string;

/** Legacy names, accepted on input and stored as their modern names. */
export const LEGACY_OPERATION_TYPES: Readonly<Record<string, OperationType>> = {
  ideas: "idea_generation",
  content: "content_generation",
  images: "image_generation",
};

/** Lowercase letters, digits and "_", starting with a letter; at most 50 (the column). */
export const OPERATION_TYPE_RE = /^[a-z][a-z0-9_]{0,49}$/;

/** The modern name of an operation type, or INVALID_ARGUMENT naming `field` when it cannot be one. */
export function normalizeOperationType(value: string, field = "operation_type"): OperationType {
  if (value === "") throw invalidField(field, "is required");
  const modern = Object.hasOwn(LEGACY_OPERATION_TYPES, value) ? LEGACY_OPERATION_TYPES[value]! : value;
  if (!OPERATION_TYPE_RE.test(modern)) throw invalidField(field, "must be an operation type name: lowercase letters, digits and _ (at most 50)");
  return modern;
}
