/**
 * The provider webhooks adapter: every delivery received (webhook_events).
 * SQL only; the rules live in src/domain/payments/webhooks.ts.
 */
import type { Sequelize, Transaction } from "sequelize";
import { row, run } from "../sql.js";

/** One delivery as recorded. */
export interface WebhookEventRecord {
  provider: string;
  eventId: string;
  eventType: string;
  signatureValid: boolean;
  outcome: string;
  detail: string;
  /** The delivery's JSON text when jsonb can hold it, else null. */
  payload: string | null;
  rawBody: Buffer;
}

/**
 * Records a delivery. With `claim`, the row claims (provider, event id):
 * undefined when a verified delivery of that event already claimed it;
 * otherwise the new row's id.
 */
export async function recordWebhookEvent(db: Sequelize, t: Transaction | undefined, e: WebhookEventRecord, claim: boolean): Promise<string | undefined> {
  const r = await row<{ id: string }>(
    db,
    `INSERT INTO webhook_events (provider, event_id, event_type, signature_valid, claimed, outcome, detail, payload, raw_body)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)
     ${claim ? "ON CONFLICT (provider, event_id) WHERE claimed DO NOTHING" : ""} RETURNING id`,
    [e.provider, e.eventId, e.eventType, e.signatureValid, claim, e.outcome, e.detail, e.payload, e.rawBody],
    t,
  );
  return r?.id;
}

/** What a recorded event did, once applied. */
export async function setWebhookOutcome(db: Sequelize, t: Transaction, id: string, outcome: { outcome: string; detail: string; paymentId: string | null }): Promise<void> {
  await run(db, `UPDATE webhook_events SET outcome = $2, detail = $3, payment_id = $4 WHERE id = $1`, [id, outcome.outcome, outcome.detail, outcome.paymentId], t);
}
