/**
 * Price versions (issue 17): filled in by the price-versions work.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async () => {};

export const down: Migration = async () => {};
