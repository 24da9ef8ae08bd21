/** A JSON object as stored in jsonb columns (metadata, snapshots, audit records). */
export type JsonObject = { [key: string]: unknown };
