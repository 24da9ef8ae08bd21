/**
 * The invoice state machine, declared as a table (src/domain/state-machine.ts).
 */
import { stateMachine } from "../state-machine.js";

export type InvoiceStatus = "draft" | "pending" | "paid" | "void" | "uncollectible";
export type InvoiceAction = "finalize" | "add_line_item" | "void" | "mark_uncollectible" | "pay";

const INVOICES = stateMachine<InvoiceStatus, InvoiceAction>("an invoice", {
  finalize: { from: ["draft"], to: "pending" },
  add_line_item: { from: ["draft"] },
  void: { from: ["draft", "pending"], to: "void" },
  mark_uncollectible: { from: ["pending"], to: "uncollectible" },
  // Only a succeeded payment covering the total takes this one; a partial one leaves the invoice PENDING.
  pay: { from: ["pending"], to: "paid" },
});

/** The status after `action`, or FAILED_PRECONDITION / INVALID_STATE_TRANSITION. */
export function transition(current: InvoiceStatus, action: InvoiceAction): InvoiceStatus {
  return INVOICES.next(current, action);
}

/** Whether `action` may start from `current` (for callers that answer with their own message). */
export function invoiceAllows(current: string, action: InvoiceAction): boolean {
  return INVOICES.can(current as InvoiceStatus, action);
}
