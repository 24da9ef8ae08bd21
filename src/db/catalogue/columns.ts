/**
 * The SET list of an UPDATE over the catalogue tables: one `column = $n`
 * per changed column, its value appended to `bind` (jsonb columns as JSON
 * text, since node-postgres would send an array as a PostgreSQL array).
 */
export function assignments(changes: Readonly<Record<string, unknown>>, bind: unknown[], json: readonly string[] = []): string {
  return Object.entries(changes)
    .filter(([, value]) => value !== undefined)
    .map(([column, value]) => (json.includes(column) ? `${column} = $${bind.push(value === null ? null : JSON.stringify(value))}::jsonb` : `${column} = $${bind.push(value)}`))
    .join(", ");
}
