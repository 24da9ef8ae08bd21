/**
 * The payment state machine, declared as a table (src/domain/state-machine.ts).
 * Where the data decides the target, `to` is left out: a refund leads to
 * REFUNDED or PARTIALLY_REFUNDED by its amount (a DISPUTED payment stays
 * DISPUTED and returns there later), and closing a dispute returns to the
 * state the payment had before it.
 */
import { stateMachine } from "../state-machine.js";

export type PaymentStatus = "pending_approval" | "succeeded" | "failed" | "refunded" | "partially_refunded" | "disputed";
type PaymentAction = "approve" | "reject" | "settle" | "fail" | "refund" | "provider_refund" | "open_dispute" | "close_dispute";

/** The payment transitions; `check` answers FAILED_PRECONDITION "cannot <action> a payment that is <STATUS>". */
export const PAYMENTS = stateMachine<PaymentStatus, PaymentAction>("a payment", {
  // An admin approves a manual payment; it then settles.
  approve: { from: ["pending_approval"], to: "succeeded" },
  reject: { from: ["pending_approval"], to: "failed" },
  // A provider reports success: a new or waiting payment, or one that failed before and now went through.
  settle: { from: ["pending_approval", "failed"], to: "succeeded" },
  fail: { from: ["pending_approval"], to: "failed" },
  // Admins refund settled payments; a provider may also refund a DISPUTED one.
  refund: { from: ["succeeded", "partially_refunded"] },
  provider_refund: { from: ["succeeded", "partially_refunded", "disputed"] },
  open_dispute: { from: ["succeeded", "partially_refunded", "refunded"], to: "disputed" },
  close_dispute: { from: ["disputed"] },
});
