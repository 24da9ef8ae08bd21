/**
 * The invoice state machine, declared as a table. Every status change goes
 * through `transition`, under the invoice's row lock, so racing transitions
 * see each other's result.
 */
import { failedPrecondition, Reason } from "../errors.js";

export type InvoiceStatus = "draft" | "pending" | "paid" | "void" | "uncollectible";
export type InvoiceAction = "finalize" | "void" | "mark_uncollectible" | "pay";

export const TRANSITIONS: Record<InvoiceAction, { from: readonly InvoiceStatus[]; to: InvoiceStatus }> = {
  finalize: { from: ["draft"], to: "pending" },
  void: { from: ["draft", "pending"], to: "void" },
  mark_uncollectible: { from: ["pending"], to: "uncollectible" },
  // Only a succeeded payment covering the total takes this one.
  pay: { from: ["pending"], to: "paid" },
};

/** The status after `action`, or FAILED_PRECONDITION / INVALID_STATE_TRANSITION. */
export function transition(current: InvoiceStatus, action: InvoiceAction): InvoiceStatus {
  const rule = TRANSITIONS[action];
  if (!rule.from.includes(current)) {
    throw failedPrecondition(Reason.InvalidStateTransition, `cannot ${action.replace("_", " ")} an invoice that is ${current.toUpperCase()}`, {
      status: current.toUpperCase(),
      action,
    });
  }
  return rule.to;
}
