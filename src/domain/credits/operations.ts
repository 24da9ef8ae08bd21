/**
 * AI operation types (the seed's OPERATION_TYPE_CHOICES). Legacy names are
 * accepted on input and stored as their modern names.
 */
import { invalidField } from "../errors.js";

export const OPERATION_TYPES = [
  "clustering",
  "idea_generation",
  "content_generation",
  "image_generation",
  "image_prompt_extraction",
  "linking",
  "optimization",
  "reparse",
  "site_page_generation",
  "site_structure_generation",
] as const;

export type OperationType = (typeof OPERATION_TYPES)[number];

const LEGACY: Record<string, OperationType> = {
  ideas: "idea_generation",
  content: "content_generation",
  images: "image_generation",
};

/** The modern name of an operation type, or INVALID_ARGUMENT naming `field`. */
export function normalizeOperationType(value: string, field = "operation_type"): OperationType {
  if (value === "") throw invalidField(field, "is required");
  const modern = LEGACY[value] ?? value;
  if (!(OPERATION_TYPES as readonly string[]).includes(modern)) {
    throw invalidField(field, `unknown operation type; expected one of ${OPERATION_TYPES.join(", ")} (or legacy ideas, content, images)`);
  }
  return modern as OperationType;
}
