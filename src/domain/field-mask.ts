/**
 * Update masks (AIP-134). Paths are matched ignoring case and underscores:
 * a FieldMask sent as Connect JSON arrives with camelCase turned back into
 * snake_case, which cannot restore names like `input_cost_per_1m` (JSON
 * "inputCostPer1m" becomes "input_cost_per1m"), so both spellings must work.
 */
import { invalidField } from "./errors.js";

const loose = (path: string) => path.replace(/_/g, "").toLowerCase();

/** The updatable field a mask path names (optionally prefixed by `resource.`), or INVALID_ARGUMENT on update_mask. */
export function maskField<F extends string>(raw: string, resource: string, updatable: readonly F[]): F {
  const path = raw.startsWith(resource + ".") ? raw.slice(resource.length + 1) : raw;
  const found = updatable.find((f) => loose(f) === loose(path));
  if (!found) throw invalidField("update_mask", `${JSON.stringify(raw)} cannot be updated; updatable: ${updatable.join(", ")}`);
  return found;
}
