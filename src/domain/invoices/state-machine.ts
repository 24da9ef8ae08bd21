/**
 * The invoice state machine, declared as a table (src/domain/state-machine.ts).
 */
import { stateMachine } from "../state-machine.js";

export type InvoiceStatus = "draft" | "pending" | "paid" | "void" | "uncollectible";
export type InvoiceAction = "finalize" | "void" | "mark_uncollectible" | "pay";

const INVOICES = stateMachine<InvoiceStatus, InvoiceAction>("an invoice", {
  finalize: { from: ["draft"], to: "pending" },
  void: { from: ["draft", "pending"], to: "void" },
  mark_uncollectible: { from: ["pending"], to: "uncollectible" },
  // Only a succeeded payment covering the total takes this one.
  pay: { from: ["pending"], to: "paid" },
});

/** The status after `action`, or FAILED_PRECONDITION / INVALID_STATE_TRANSITION. */
export function transition(current: InvoiceStatus, action: InvoiceAction): InvoiceStatus {
  return INVOICES.next(current, action);
}
