/**
 * State machines declared as tables: each action names the states it may
 * start from and the state it leads to. Every status change of an invoice,
 * a payment or a reservation goes through its table, under the row's lock,
 * so racing transitions see each other's result.
 */
import { failedPrecondition, Reason } from "./errors.js";

/** One action: the states it may start from, and where it leads (omitted when the data decides, e.g. a partial refund). */
export interface Rule<S extends string> {
  from: readonly S[];
  to?: S;
}

export interface StateMachine<S extends string, A extends string> {
  readonly table: Readonly<Record<A, Rule<S>>>;
  /** Whether `action` may start from `current`. */
  can(current: S, action: A): boolean;
  /** Throws FAILED_PRECONDITION / INVALID_STATE_TRANSITION unless `action` may start from `current`. */
  check(current: S, action: A): void;
  /** The state after `action` (checked); for rules without `to`, `current`. */
  next(current: S, action: A): S;
}

/** A state machine over `table` for `what` (e.g. "an invoice"), with FAILED_PRECONDITION answers naming the state and action. */
export function stateMachine<S extends string, A extends string>(what: string, table: Readonly<Record<A, Rule<S>>>): StateMachine<S, A> {
  const can = (current: S, action: A) => table[action].from.includes(current);
  const check = (current: S, action: A) => {
    if (!can(current, action)) {
      throw failedPrecondition(Reason.InvalidStateTransition, `cannot ${action.replace(/_/g, " ")} ${what} that is ${current.toUpperCase()}`, {
        status: current.toUpperCase(),
        action,
      });
    }
  };
  return {
    table,
    can,
    check,
    next(current, action) {
      check(current, action);
      return table[action].to ?? current;
    },
  };
}
