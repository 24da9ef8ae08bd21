-- billing_events: the outbox. Every change other systems care about writes
-- one billing_events row from a trigger on the changed table, so the event
-- is written by the very transaction that makes the change, whichever code
-- path made it: it exists if and only if the change committed. Applied with
-- CREATE OR REPLACE on every migration run (src/db/migrate.ts).
--
-- `data` holds the facts in snake_case with amounts as stored; the one
-- reader, src/domain/events/events.ts, turns a row into the documented
-- payload (proto billing.v1.Event, money formatted by src/domain/money.ts).
--
-- Deductions write no event of their own (that would double the hot path's
-- writes); the balance trigger's WHEN clause lets a deduction through at the
-- cost of one comparison unless it crosses a watched threshold.

-- Writes one event (and, through billing_events_fan_out, its webhook deliveries).
CREATE OR REPLACE FUNCTION billing_emit(p_account text, p_type text, p_data jsonb, p_dedupe text DEFAULT NULL)
RETURNS void LANGUAGE sql VOLATILE AS $fn$
  INSERT INTO billing_events (account_id, type, data, dedupe_key) VALUES (p_account, p_type, p_data, p_dedupe)
  ON CONFLICT (account_id, type, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING;
$fn$;

-- Makes sure the account row exists and locks it: every transaction that
-- changes what an account watches (alerts, auto top-up settings) takes this
-- first, so such changes are serialised with each other and with debits
-- (account row first, the ledger's lock order), and billing_rewatch, run
-- afterwards as a statement of its own, reads every committed change.
CREATE OR REPLACE FUNCTION billing_lock_account(p_account text)
RETURNS void LANGUAGE sql VOLATILE AS $fn$
  INSERT INTO billing_accounts (account_id, balance) VALUES (p_account, 0) ON CONFLICT (account_id) DO NOTHING;
  SELECT 1 FROM billing_accounts WHERE account_id = p_account FOR UPDATE;
$fn$;

-- Keeps billing_accounts.watch_min/watch_max equal to the least and greatest
-- threshold the account watches (its alerts and its enabled auto top-up).
-- Called by whatever changes those, in the same transaction, after
-- billing_lock_account.
CREATE OR REPLACE FUNCTION billing_rewatch(p_account text)
RETURNS void LANGUAGE sql VOLATILE AS $fn$
  INSERT INTO billing_accounts (account_id, balance) VALUES (p_account, 0) ON CONFLICT (account_id) DO NOTHING;
  UPDATE billing_accounts a SET watch_min = w.lo, watch_max = w.hi
  FROM (SELECT min(t) AS lo, max(t) AS hi FROM (
          SELECT threshold AS t FROM balance_thresholds WHERE account_id = p_account
          UNION ALL
          SELECT threshold FROM auto_top_up_settings WHERE account_id = p_account AND enabled) x) w
  WHERE a.account_id = p_account;
$fn$;

-- balance.low once per threshold crossed downward (from >= t to < t) and
-- balance.depleted on reaching zero, whatever lowered the balance; and an
-- auto top-up attempt once per crossing of its threshold by usage (a
-- deduction or reservation commit: billing_debit sets billing.usage_debit
-- for the balance write; a refund, void, adjustment or expiry starts none).
-- At most one attempt is in flight per account; it is carried out by
-- src/domain/automation, outside this transaction.
CREATE OR REPLACE FUNCTION billing_balance_crossed() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  t bigint;
  s record;
BEGIN
  FOR t IN SELECT b.threshold FROM balance_thresholds b
           WHERE b.account_id = NEW.account_id AND b.threshold <= OLD.balance AND b.threshold > NEW.balance
           ORDER BY b.threshold DESC LOOP
    PERFORM billing_emit(NEW.account_id, 'balance.low',
      jsonb_build_object('threshold', t, 'previous_balance', OLD.balance, 'balance', NEW.balance));
  END LOOP;
  IF OLD.balance > 0 AND NEW.balance = 0 THEN
    PERFORM billing_emit(NEW.account_id, 'balance.depleted', jsonb_build_object('previous_balance', OLD.balance));
  END IF;
  IF current_setting('billing.usage_debit', true) IS DISTINCT FROM 'on' THEN RETURN NULL; END IF;
  SELECT * INTO s FROM auto_top_up_settings a
  WHERE a.account_id = NEW.account_id AND a.enabled AND a.threshold <= OLD.balance AND a.threshold > NEW.balance;
  IF FOUND THEN
    INSERT INTO auto_top_ups (account_id, package_id, threshold, balance_at_trigger)
    VALUES (NEW.account_id, s.package_id, s.threshold, NEW.balance)
    ON CONFLICT (account_id) WHERE state IN ('pending', 'processing') DO NOTHING;
  END IF;
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER billing_accounts_watch
AFTER UPDATE OF balance ON billing_accounts FOR EACH ROW
WHEN (NEW.balance < OLD.balance AND (
        (OLD.balance > 0 AND NEW.balance = 0)
        OR (NEW.watch_max IS NOT NULL AND NEW.balance < NEW.watch_max AND OLD.balance >= NEW.watch_min)))
EXECUTE FUNCTION billing_balance_crossed();

-- credits.granted: every grant creates a lot (README, "Credit lots").
CREATE OR REPLACE FUNCTION billing_lot_granted() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  tx record;
BEGIN
  SELECT c.id, c.type, c.balance_after INTO tx FROM credit_transactions c
  WHERE c.account_id = NEW.account_id AND c.id = NEW.transaction_id;
  PERFORM billing_emit(NEW.account_id, 'credits.granted', jsonb_build_object(
    'transaction_id', NEW.transaction_id::text, 'transaction_type', tx.type, 'amount', NEW.amount,
    'balance_after', tx.balance_after, 'lot_id', NEW.id, 'category', NEW.category,
    'payment_id', NEW.payment_id, 'expires_at', NEW.expires_at));
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER credit_lots_events
AFTER INSERT ON credit_lots FOR EACH ROW
EXECUTE FUNCTION billing_lot_granted();

-- credits.expired: the EXPIRATION entry billing_debit writes for a lot that reached its expiry.
CREATE OR REPLACE FUNCTION billing_credits_expired() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM billing_emit(NEW.account_id, 'credits.expired', jsonb_build_object(
    'transaction_id', NEW.id::text, 'lot_id', NEW.allocations->0->>'lot_id', 'amount', -NEW.amount,
    'balance_after', NEW.balance_after));
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER credit_transactions_events
AFTER INSERT ON credit_transactions FOR EACH ROW
WHEN (NEW.type = 'expiration')
EXECUTE FUNCTION billing_credits_expired();

-- reservation.expired: a hold marked expired (by the sweeper, or by a release that found it expired).
CREATE OR REPLACE FUNCTION billing_reservation_expired() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM billing_emit(NEW.account_id, 'reservation.expired',
    jsonb_build_object('reservation_id', NEW.id, 'credits', NEW.credits));
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER credit_reservations_events
AFTER UPDATE OF status ON credit_reservations FOR EACH ROW
WHEN (NEW.status = 'expired' AND OLD.status IS DISTINCT FROM 'expired')
EXECUTE FUNCTION billing_reservation_expired();

-- invoice.finalized (DRAFT → PENDING, or created PENDING) and invoice.paid.
CREATE OR REPLACE FUNCTION billing_invoice_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  kind text;
BEGIN
  IF NEW.status = 'pending' AND (TG_OP = 'INSERT' OR OLD.status = 'draft') THEN kind := 'invoice.finalized';
  ELSIF NEW.status = 'paid' AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'paid') THEN kind := 'invoice.paid';
  ELSE RETURN NULL;
  END IF;
  PERFORM billing_emit(NEW.account_id, kind, jsonb_build_object(
    'invoice_id', NEW.id, 'invoice_number', NEW.invoice_number, 'total', NEW.total::text,
    'currency', NEW.currency, 'status', NEW.status));
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER invoices_events
AFTER INSERT OR UPDATE OF status ON invoices FOR EACH ROW
EXECUTE FUNCTION billing_invoice_changed();

-- payment.succeeded, payment.failed, and payment.refunded (each refund, partial or full).
CREATE OR REPLACE FUNCTION billing_payment_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  old_status   text := CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE OLD.status END;
  old_refunded numeric := CASE WHEN TG_OP = 'INSERT' THEN 0 ELSE OLD.amount_refunded END;
  facts        jsonb := jsonb_build_object(
    'payment_id', NEW.id, 'invoice_id', NEW.invoice_id, 'amount', NEW.amount::text, 'currency', NEW.currency,
    'status', NEW.status, 'amount_refunded', NEW.amount_refunded::text, 'payment_method', NEW.payment_method);
BEGIN
  IF NEW.status = 'succeeded' AND old_status IS DISTINCT FROM 'succeeded' AND old_status IS DISTINCT FROM 'disputed' THEN
    PERFORM billing_emit(NEW.account_id, 'payment.succeeded', facts);
  ELSIF NEW.status = 'failed' AND old_status IS DISTINCT FROM 'failed' THEN
    PERFORM billing_emit(NEW.account_id, 'payment.failed', facts || jsonb_build_object('failure_reason', NEW.failure_reason));
  END IF;
  IF NEW.amount_refunded > old_refunded THEN
    PERFORM billing_emit(NEW.account_id, 'payment.refunded', facts || jsonb_build_object('refund_amount', (NEW.amount_refunded - old_refunded)::text));
  END IF;
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER payments_events
AFTER INSERT OR UPDATE OF status, amount_refunded ON payments FOR EACH ROW
EXECUTE FUNCTION billing_payment_changed();

-- Each event gets a delivery for every enabled webhook endpoint subscribed
-- to its type, in the same transaction (so deliveries survive restarts and
-- exist only for committed events).
CREATE OR REPLACE FUNCTION billing_events_fan_out() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  INSERT INTO webhook_deliveries (account_id, event_id, event_type, endpoint_id)
  SELECT NEW.account_id, NEW.id, NEW.type, e.id FROM webhook_endpoints e
  WHERE e.enabled AND (cardinality(e.event_types) = 0 OR NEW.type = ANY (e.event_types));
  RETURN NULL;
END
$fn$;

CREATE OR REPLACE TRIGGER billing_events_fan_out
AFTER INSERT ON billing_events FOR EACH ROW
EXECUTE FUNCTION billing_events_fan_out();
