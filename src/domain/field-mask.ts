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

/** Whether a field holds its proto3 default (so an empty mask leaves it alone). */
export function isUnset(value: unknown): boolean {
  return value === undefined || value === null || value === "" || value === 0 || value === 0n || value === false || (Array.isArray(value) && value.length === 0) || (typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Date) && Object.keys(value).length === 0);
}

/**
 * The fields an update changes (AIP-134), the one reading of update masks:
 * the mask's paths (each an updatable field, optionally prefixed by
 * `resource.`, matched loosely; repeats count once), or, with an empty mask,
 * every updatable field whose value in `populated` is set. No field at all
 * is INVALID_ARGUMENT on update_mask unless `allowEmpty`.
 */
export function applyMask<F extends string>(
  paths: readonly string[],
  resource: string,
  updatable: readonly F[],
  populated: Readonly<Record<F, unknown>>,
  options: { allowEmpty?: boolean } = {},
): F[] {
  const fields = paths.length ? [...new Set(paths.map((p) => maskField(p, resource, updatable)))] : updatable.filter((f) => !isUnset(populated[f]));
  if (fields.length === 0 && !options.allowEmpty) throw invalidField("update_mask", "names no field to update");
  return fields;
}
