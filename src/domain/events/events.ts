/**
 * Domain events: the outbox rows the triggers of
 * src/db/functions/billing_events.sql write in the changing transaction, read
 * back in commit order.
 *
 * Commit order: every event carries the id of the transaction that wrote it
 * (`tx`) and a sequence number. Readers see only events whose transaction is
 * older than every transaction still running (`tx < xmin` of the reading
 * snapshot) and page by (tx, seq), so a cursor never skips an event that
 * commits later with a smaller sequence number. The price: an event becomes
 * readable only once every transaction older than its own has ended.
 */
import type { Sequelize, Transaction } from "sequelize";
import { committedEvents, emit, eventById, readableTx, type EventRow } from "../../db/events/billing-events.js";
import { amountIn, formatMoney } from "../money.js";
import { Violations, invalidField, notFound } from "../errors.js";
import { encodePageToken, pageRequest, pageSize } from "../pagination.js";
import { requireId } from "../validation.js";

/** Every event type, in the documented order. */
const EVENT_TYPES = [
  "credits.granted",
  "credits.expired",
  "credit_lot.expiring_soon",
  "balance.low",
  "balance.depleted",
  "reservation.expired",
  "invoice.finalized",
  "invoice.paid",
  "payment.succeeded",
  "payment.refunded",
  "payment.failed",
  "auto_top_up.succeeded",
  "auto_top_up.failed",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** The payload of an event, by the proto oneof case it renders to. */
export type EventData =
  | { case: "creditsGranted"; value: { transactionId: string; transactionType: string; amount: bigint; balanceAfter: bigint; lotId: string; paymentId: string; expiresAt?: Date } }
  | { case: "creditsExpired"; value: { transactionId: string; lotId: string; amount: bigint; balanceAfter: bigint } }
  | { case: "creditLotExpiringSoon"; value: { lotId: string; remaining: bigint; expiresAt?: Date } }
  | { case: "balanceLow"; value: { threshold: bigint; previousBalance: bigint; balance: bigint } }
  | { case: "balanceDepleted"; value: { previousBalance: bigint } }
  | { case: "reservationExpired"; value: { reservationId: string; credits: bigint } }
  | { case: "invoice"; value: { invoiceId: string; invoiceNumber: string; total: string; currency: string; status: string } }
  | {
      case: "payment";
      value: { paymentId: string; invoiceId: string; amount: string; currency: string; status: string; refundAmount: string; amountRefunded: string; failureReason: string; paymentMethod: string };
    }
  | { case: "autoTopUp"; value: { topUpId: string; packageId: string; credits: bigint; invoiceId: string; paymentId: string; failureReason: string } };

/** One event as callers see it. */
export interface EventView {
  /** "evt_" + the row's uuid without dashes: stable, the webhook-id of every delivery. */
  id: string;
  type: EventType;
  accountId: string;
  createdAt: Date;
  data: EventData;
  /** Resumes after this event (ListEvents page_token / WatchEvents cursor). */
  cursor: string;
}

/** Filters of a list or watch of events. */
export interface EventFilter {
  accountId: string;
  types: string[];
}

export interface ListEventsInput extends EventFilter {
  startTime?: Date;
  endTime?: Date;
  pageSize: number;
  pageToken: string;
}

const LIST = "events";

/** Reads events. */
export class Events {
  constructor(private readonly sequelize: Sequelize) {}

  /** Events in commit order after the page token, with a cursor to resume after them. */
  async list(input: ListEventsInput): Promise<{ events: EventView[]; nextPageToken: string; cursor: string }> {
    const v = new Violations();
    const filter = v.collect(() => checkFilter(input));
    const size = v.collect(() => pageSize(input.pageSize));
    if (input.startTime && input.endTime && input.endTime <= input.startTime) v.add("end_time", "must be after start_time");
    v.throwIfAny();
    const after = decodeCursor(input.pageToken, filter!, "page_token");
    const rows = await committedEvents(this.sequelize, { ...filter!, after, limit: size! + 1, startTime: input.startTime, endTime: input.endTime });
    const more = rows.length > size!;
    const page = more ? rows.slice(0, size) : rows;
    const last = page[page.length - 1];
    const cursor = last ? cursorOf(filter!, last) : input.pageToken || (await this.headCursor(filter!));
    return { events: page.map((r) => viewOf(r, filter!)), nextPageToken: more ? cursor : "", cursor };
  }

  /** The events after `cursor` (at most `limit`), for watchers. */
  async after(filter: EventFilter, cursor: string, limit: number): Promise<EventView[]> {
    const after = decodeCursor(cursor, filter, "cursor");
    return (await committedEvents(this.sequelize, { ...filter, after, limit })).map((r) => viewOf(r, filter));
  }

  /** Validates a watch request; returns its filter and the cursor it starts after (now, when none is given). */
  async startWatch(input: EventFilter & { cursor: string }): Promise<{ filter: EventFilter; cursor: string }> {
    const v = new Violations();
    const filter = v.collect(() => checkFilter(input));
    v.throwIfAny();
    decodeCursor(input.cursor, filter!, "cursor");
    return { filter: filter!, cursor: input.cursor || (await this.headCursor(filter!)) };
  }

  /** One event by its id ("evt_…"). */
  async get(eventId: string, field = "event_id"): Promise<EventView> {
    const uuid = uuidOfEventId(eventId, field);
    const row = await eventById(this.sequelize, uuid);
    if (!row) throw notFound("event", eventId);
    return viewOf(row, { accountId: "", types: [] });
  }

  /** A cursor after every event readable now (for "from now on"). */
  private async headCursor(filter: EventFilter): Promise<string> {
    return encodePageToken(LIST, filterKey(filter), [await readableTx(this.sequelize), String(Number.MAX_SAFE_INTEGER)]);
  }
}

/** The uuid of an event id ("evt_" + 32 hex digits); INVALID_ARGUMENT naming `field` otherwise. */
export function uuidOfEventId(eventId: string, field = "event_id"): string {
  const m = /^evt_([0-9a-f]{8})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{4})([0-9a-f]{12})$/.exec(eventId);
  if (!m) throw invalidField(field, 'must be an event id ("evt_" followed by 32 lower-case hex digits)');
  return m.slice(1).join("-");
}

/** The event id of a billing_events row's uuid. */
export function eventIdOf(uuid: string): string {
  return "evt_" + uuid.replace(/-/g, "");
}

/** Checks event type names (for filters and webhook subscriptions); returns them sorted and unique. */
export function checkEventTypes(types: string[], field: string): string[] {
  const known = new Set<string>(EVENT_TYPES);
  types.forEach((t, i) => {
    if (!known.has(t)) throw invalidField(`${field}[${i}]`, `is not an event type; known types: ${EVENT_TYPES.join(", ")}`);
  });
  return [...new Set(types)].sort();
}

function checkFilter(input: EventFilter): EventFilter {
  if (input.accountId !== "") requireId(input.accountId, "account_id");
  return { accountId: input.accountId, types: checkEventTypes(input.types, "types") };
}

function filterKey(filter: EventFilter): unknown {
  return { a: filter.accountId, t: filter.types };
}

function cursorOf(filter: EventFilter, row: EventRow): string {
  return encodePageToken(LIST, filterKey(filter), [row.tx, row.seq]);
}

/** The (tx, seq) position a cursor or page token stands for; INVALID_ARGUMENT naming `field` when it is not one of these filters'. */
function decodeCursor(token: string, filter: EventFilter, field: string): [string, string] | undefined {
  try {
    return pageRequest({ pageSize: 0, pageToken: token }, LIST, filterKey(filter), ["digits", "digits"]).after as [string, string] | undefined;
  } catch {
    throw invalidField(field, "is not a valid cursor for these filters (account_id and types must match the request that returned it)");
  }
}

/** The caller-facing form of an event row: the one place stored facts become the documented payload. */
function viewOf(row: EventRow, filter: EventFilter): EventView {
  return {
    id: eventIdOf(row.id),
    type: row.type as EventType,
    accountId: row.account_id,
    createdAt: row.created_at,
    data: dataOf(row.type, row.data),
    cursor: cursorOf(filter, row),
  };
}

function dataOf(type: string, d: Record<string, unknown>): EventData {
  const s = (k: string) => (d[k] === null || d[k] === undefined ? "" : String(d[k]));
  const n = (k: string) => (d[k] === null || d[k] === undefined ? 0n : BigInt(String(d[k])));
  const t = (k: string) => (typeof d[k] === "string" ? new Date(d[k]) : undefined);
  const money = (k: string) => (d[k] === null || d[k] === undefined ? "" : formatMoney(String(d[k]), amountIn(s("currency"))));
  switch (type) {
    case "credits.granted":
      return {
        case: "creditsGranted",
        value: { transactionId: s("transaction_id"), transactionType: s("transaction_type"), amount: n("amount"), balanceAfter: n("balance_after"), lotId: s("lot_id"), paymentId: s("payment_id"), expiresAt: t("expires_at") },
      };
    case "credits.expired":
      return { case: "creditsExpired", value: { transactionId: s("transaction_id"), lotId: s("lot_id"), amount: n("amount"), balanceAfter: n("balance_after") } };
    case "credit_lot.expiring_soon":
      return { case: "creditLotExpiringSoon", value: { lotId: s("lot_id"), remaining: n("remaining"), expiresAt: t("expires_at") } };
    case "balance.low":
      return { case: "balanceLow", value: { threshold: n("threshold"), previousBalance: n("previous_balance"), balance: n("balance") } };
    case "balance.depleted":
      return { case: "balanceDepleted", value: { previousBalance: n("previous_balance") } };
    case "reservation.expired":
      return { case: "reservationExpired", value: { reservationId: s("reservation_id"), credits: n("credits") } };
    case "invoice.finalized":
    case "invoice.paid":
      return { case: "invoice", value: { invoiceId: s("invoice_id"), invoiceNumber: s("invoice_number"), total: money("total"), currency: s("currency"), status: s("status").toUpperCase() } };
    case "payment.succeeded":
    case "payment.refunded":
    case "payment.failed":
      return {
        case: "payment",
        value: {
          paymentId: s("payment_id"),
          invoiceId: s("invoice_id"),
          amount: money("amount"),
          currency: s("currency"),
          status: s("status"),
          refundAmount: money("refund_amount"),
          amountRefunded: money("amount_refunded"),
          failureReason: s("failure_reason"),
          paymentMethod: s("payment_method"),
        },
      };
    case "auto_top_up.succeeded":
    case "auto_top_up.failed":
      return {
        case: "autoTopUp",
        value: { topUpId: s("top_up_id"), packageId: s("package_id"), credits: n("credits"), invoiceId: s("invoice_id"), paymentId: s("payment_id"), failureReason: s("failure_reason") },
      };
    default:
      throw new Error(`billing_events: unknown event type ${type}`);
  }
}

/**
 * Writes an event from TypeScript inside the caller's transaction (for
 * changes no table trigger sees: auto top-up outcomes, expiry warnings).
 * With `dedupeKey`, a second event of that type and key for the account is
 * not written.
 */
export function emitIn(sequelize: Sequelize, t: Transaction, accountId: string, type: EventType, data: Record<string, unknown>, dedupeKey?: string): Promise<void> {
  return emit(sequelize, t, accountId, type, data, dedupeKey);
}
