-- billing_reserved / billing_pending: the one definition of an account's
-- open holds and of its credits in lots not yet effective (on the balance,
-- not available). Used by the balance reads (src/db/credits/accounts.ts)
-- and, for holds, by billing_debit below (which sums pending credits from
-- the lots it reads anyway, by the same rule). Set-returning SQL functions, so that the
-- planner inlines them into the statement that reads them: no extra
-- statement, the same plan as a subquery written in place.
CREATE OR REPLACE FUNCTION billing_reserved(account text) RETURNS TABLE (reserved bigint)
LANGUAGE sql STABLE AS $fn$
  SELECT coalesce(sum(c.credits), 0)::bigint FROM credit_reservations c
  WHERE c.account_id = account AND c.status = 'active' AND c.expires_at > now()
$fn$;

CREATE OR REPLACE FUNCTION billing_pending(account text) RETURNS TABLE (pending bigint)
LANGUAGE sql STABLE AS $fn$
  SELECT coalesce(sum(l.remaining), 0)::bigint FROM credit_lots l
  WHERE l.account_id = account AND l.state = 'active' AND l.remaining > 0 AND l.effective_at > now()
$fn$;

-- billing_debit: the one place credits leave the ledger (deductions, single
-- and coalesced; reservation commits; negative adjustments; refunds; voided
-- and expired lots). Applied with CREATE OR REPLACE on every migration run
-- (src/db/migrate.ts), so a change of the rule is a diff of this file.
-- README.md, "Credit lots", states the rules in prose; this is them in full.
--
-- p_requests is a JSON array; each element is one debit:
--   account      the account (required)
--   credits      credits to take (> 0; for mode 'all' ignored)
--   type         ledger type: deduction | adjustment | refund | void
--   description, metadata, payment_id (optional)
--   mode         'strict'  (default) all of `credits` or nothing: 'insufficient'
--                'partial' as much of `credits` as fits (may be 0: 'empty')
--                'all'     everything left in `lot` (voids)
--   lot          draw only from this lot (refunds by provenance, voids)
--   key, hash    idempotency: claimed first; a taken key is answered from
--                what it stored ('replay'), 'reused' for another request, or
--                'taken' while its owner is this very statement
--   usage        {operation, cost, model, tokens_in, tokens_out, related_type,
--                related_id, cost_version, model_version}: also write a
--                credit_usage_logs row (with the price version ids it was priced with)
-- p_accounts: more accounts to bring up to date (expire their due lots)
-- without debiting them.
--
-- The rule, per statement:
-- 1. Keys are claimed in (account, key) order, accounts locked in account
--    order (so no two statements deadlock), holds read after the lock.
-- 2. Lots of those accounts that reached expires_at leave the balance first,
--    each through an EXPIRATION ledger row: a credit is never both spent and
--    expired, and no balance includes expired credits.
-- 3. Available = balance - open holds - credits of lots not yet effective.
-- 4. In arrival order, each request draws from its account's usable lots in
--    burn order: priority (lower first), then soonest expires_at (never
--    expiring last), then oldest, then id. Its ledger row records the
--    allocations ([{lot_id, amount}]) and balance_after.
-- 5. Lots and balances are written once each at the end.
-- Each returned row: ord (1-based request index; 0 for a lot that expired,
-- detail {account_id, amount}), outcome (ok, empty, insufficient, replay,
-- reused, taken, expired) and detail: for ok/replay the debit
-- record that src/domain/credits/debit.ts reads (and that a keyed
-- request stores as its idempotent response), for insufficient
-- {"available": n}.
CREATE OR REPLACE FUNCTION billing_debit(p_method text, p_requests jsonb, p_accounts text[] DEFAULT '{}')
RETURNS TABLE (ord integer, outcome text, detail jsonb)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  n          integer := coalesce(jsonb_array_length(p_requests), 0);
  r_account  text[];
  r_key      text[];
  r_hash     text[];
  r_credits  bigint[];
  r_type     text[];
  r_desc     text[];
  r_meta     jsonb[];
  r_payment  uuid[];
  r_mode     text[];
  r_lot      uuid[];
  r_usage    jsonb[];
  decided    text[];
  answer     jsonb[];
  accts      text[];
  bal        bigint[];
  held       bigint[];
  pend       bigint[];
  changed    boolean[];
  used       boolean[];
  l_id       uuid[];
  l_acct     integer[];
  l_rem      bigint[];
  l_pending  boolean[];
  l_touched  boolean[];
  l_count    integer := 0;
  i          integer;
  j          integer;
  k          integer;
  lot        record;
  stored     record;
  available  bigint;
  take       bigint;
  part       bigint;
  allocs     jsonb;
  tx_id      bigint;
  log_id     bigint;
  u          jsonb;
  stamp      text := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');
  rec        jsonb;
BEGIN
  SELECT coalesce(array_agg(e->>'account' ORDER BY e_n), '{}'),
         array_agg(e->>'key' ORDER BY e_n),
         array_agg(e->>'hash' ORDER BY e_n),
         array_agg(coalesce((e->>'credits')::bigint, 0) ORDER BY e_n),
         array_agg(coalesce(e->>'type', 'deduction') ORDER BY e_n),
         array_agg(coalesce(e->>'description', '') ORDER BY e_n),
         array_agg(coalesce(e->'metadata', '{}'::jsonb) ORDER BY e_n),
         array_agg((e->>'payment_id')::uuid ORDER BY e_n),
         array_agg(coalesce(e->>'mode', 'strict') ORDER BY e_n),
         array_agg((e->>'lot')::uuid ORDER BY e_n),
         array_agg(e->'usage' ORDER BY e_n)
    INTO r_account, r_key, r_hash, r_credits, r_type, r_desc, r_meta, r_payment, r_mode, r_lot, r_usage
  FROM jsonb_array_elements(coalesce(p_requests, '[]'::jsonb)) WITH ORDINALITY AS x(e, e_n);
  decided := array_fill(NULL::text, ARRAY[greatest(n, 1)]);
  answer := array_fill(NULL::jsonb, ARRAY[greatest(n, 1)]);

  -- 1. Claim the keys in (account, key) order.
  FOR i IN SELECT s.i FROM generate_subscripts(r_account, 1) AS s(i) WHERE r_key[s.i] IS NOT NULL ORDER BY r_account[s.i], r_key[s.i], s.i LOOP
    INSERT INTO idempotency_keys (account_id, key, method, request_hash, response)
    VALUES (r_account[i], r_key[i], p_method, r_hash[i], 'null'::jsonb)
    ON CONFLICT (account_id, key) DO NOTHING;
    CONTINUE WHEN FOUND;
    SELECT d.request_hash, d.response INTO stored FROM idempotency_keys d WHERE d.account_id = r_account[i] AND d.key = r_key[i];
    IF stored.response IS NULL OR stored.response = 'null'::jsonb THEN
      decided[i] := 'taken';           -- claimed by an earlier request of this statement
    ELSIF stored.request_hash = r_hash[i] THEN
      decided[i] := 'replay'; answer[i] := stored.response;
    ELSE
      decided[i] := 'reused';
    END IF;
  END LOOP;

  -- 2. Lock the accounts in a fixed order; read holds after the lock.
  SELECT coalesce(array_agg(l.account_id ORDER BY l.account_id), '{}'), coalesce(array_agg(l.balance ORDER BY l.account_id), '{}')
    INTO accts, bal
  FROM (SELECT a.account_id, a.balance FROM billing_accounts a
        WHERE a.account_id = ANY (r_account || p_accounts) ORDER BY a.account_id FOR UPDATE) l;
  held := array_fill(0::bigint, ARRAY[greatest(cardinality(accts), 1)]);
  pend := array_fill(0::bigint, ARRAY[greatest(cardinality(accts), 1)]);
  changed := array_fill(false, ARRAY[greatest(cardinality(accts), 1)]);
  used := array_fill(false, ARRAY[greatest(cardinality(accts), 1)]);
  FOR j IN 1..cardinality(accts) LOOP
    SELECT h.reserved INTO take FROM billing_reserved(accts[j]) h;
    held[j] := take;
  END LOOP;

  -- 3. The open lots, in burn order; the due ones expire now.
  FOR lot IN
    SELECT c.account_id, c.id, c.remaining, c.effective_at, c.expires_at FROM credit_lots c
    WHERE c.account_id = ANY (accts) AND c.state = 'active' AND c.remaining > 0
    ORDER BY c.account_id, c.priority, c.expires_at NULLS LAST, c.created_at, c.id
  LOOP
    j := array_position(accts, lot.account_id);
    IF lot.expires_at IS NOT NULL AND lot.expires_at <= now() THEN
      IF lot.remaining > bal[j] THEN
        RAISE EXCEPTION 'billing_debit: account % holds fewer credits (%) than its lots; the ledger is out of step with its lots', lot.account_id, bal[j];
      END IF;
      bal[j] := bal[j] - lot.remaining;
      changed[j] := true;
      INSERT INTO credit_transactions (account_id, type, amount, balance_after, description, allocations)
      VALUES (lot.account_id, 'expiration', -lot.remaining, bal[j], 'Credits expired (lot ' || lot.id || ')',
              jsonb_build_array(jsonb_build_object('lot_id', lot.id, 'amount', lot.remaining::text)));
      UPDATE credit_lots c SET remaining = 0, state = 'expired', closed_at = now() WHERE c.account_id = lot.account_id AND c.id = lot.id;
      ord := 0; outcome := 'expired'; detail := jsonb_build_object('account_id', lot.account_id, 'amount', lot.remaining::text);
      RETURN NEXT;
      CONTINUE;
    END IF;
    l_count := l_count + 1;
    l_id[l_count] := lot.id;
    l_acct[l_count] := j;
    l_rem[l_count] := lot.remaining;
    l_pending[l_count] := lot.effective_at IS NOT NULL AND lot.effective_at > now();
    l_touched[l_count] := false;
    -- The same sum as billing_pending, taken from the lots this loop reads anyway (no second scan).
    IF l_pending[l_count] THEN pend[j] := pend[j] + lot.remaining; END IF;
  END LOOP;

  -- 4. In arrival order: each request is taken from its lots, or fails alone.
  FOR i IN 1..n LOOP
    IF decided[i] IS NOT NULL THEN
      ord := i; outcome := decided[i]; detail := answer[i];
      RETURN NEXT;
      CONTINUE;
    END IF;
    j := array_position(accts, r_account[i]);
    available := CASE WHEN j IS NULL THEN 0 ELSE greatest(bal[j] - held[j] - pend[j], 0) END;
    k := NULL;
    IF r_lot[i] IS NOT NULL THEN
      k := array_position(l_id, r_lot[i]);
      IF k IS NOT NULL AND l_acct[k] IS DISTINCT FROM j THEN k := NULL; END IF;
    END IF;
    take := CASE
      WHEN r_mode[i] = 'all' THEN CASE WHEN k IS NULL THEN 0 ELSE l_rem[k] END
      WHEN r_lot[i] IS NOT NULL THEN least(r_credits[i], CASE WHEN k IS NULL THEN 0 ELSE l_rem[k] END,
                                           CASE WHEN k IS NOT NULL AND l_pending[k] THEN l_rem[k] ELSE available END)
      ELSE least(r_credits[i], available) END;
    IF r_mode[i] = 'strict' AND take < r_credits[i] THEN
      IF r_key[i] IS NOT NULL THEN
        DELETE FROM idempotency_keys d WHERE d.account_id = r_account[i] AND d.key = r_key[i];
      END IF;
      ord := i; outcome := 'insufficient';
      detail := jsonb_build_object('available', (CASE WHEN r_lot[i] IS NULL THEN available ELSE take END)::text);
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF take <= 0 THEN
      IF r_key[i] IS NOT NULL THEN
        DELETE FROM idempotency_keys d WHERE d.account_id = r_account[i] AND d.key = r_key[i];
      END IF;
      ord := i; outcome := 'empty'; detail := NULL;
      RETURN NEXT;
      CONTINUE;
    END IF;

    -- Allocate in burn order (or from the one lot named).
    allocs := '[]'::jsonb;
    IF k IS NOT NULL THEN
      l_rem[k] := l_rem[k] - take; l_touched[k] := true;
      allocs := jsonb_build_array(jsonb_build_object('lot_id', l_id[k], 'amount', take::text));
      IF l_pending[k] THEN pend[j] := pend[j] - take; END IF;
    ELSE
      part := take;
      FOR k IN 1..l_count LOOP
        EXIT WHEN part = 0;
        CONTINUE WHEN l_acct[k] <> j OR l_pending[k] OR l_rem[k] = 0;
        available := least(l_rem[k], part);
        l_rem[k] := l_rem[k] - available; l_touched[k] := true;
        part := part - available;
        allocs := allocs || jsonb_build_object('lot_id', l_id[k], 'amount', available::text);
      END LOOP;
      IF part > 0 THEN
        -- Credits on the balance that no lot holds cannot exist (balance = Σ lots); refuse rather than invent.
        RAISE EXCEPTION 'billing_debit: account % has % credits on its balance that no lot holds', r_account[i], part;
      END IF;
    END IF;
    bal[j] := bal[j] - take;
    changed[j] := true;
    IF r_type[i] = 'deduction' THEN used[j] := true; END IF;

    INSERT INTO credit_transactions (account_id, type, amount, balance_after, description, metadata, payment_id, allocations)
    VALUES (r_account[i], r_type[i], -take, bal[j], r_desc[i], r_meta[i], r_payment[i], allocs)
    RETURNING id INTO tx_id;
    u := r_usage[i];
    log_id := NULL;
    IF u IS NOT NULL AND jsonb_typeof(u) = 'object' THEN
      INSERT INTO credit_usage_logs (account_id, transaction_id, operation_type, credits_used, cost_usd, model_used,
                                     tokens_input, tokens_output, related_object_type, related_object_id, metadata,
                                     cost_config_version_id, model_price_version_id)
      VALUES (r_account[i], tx_id, u->>'operation', take, nullif(u->>'cost', '')::numeric, coalesce(u->>'model', ''),
              coalesce((u->>'tokens_in')::bigint, 0), coalesce((u->>'tokens_out')::bigint, 0),
              coalesce(u->>'related_type', ''), coalesce(u->>'related_id', ''), r_meta[i],
              nullif(u->>'cost_version', '')::bigint, nullif(u->>'model_version', '')::bigint)
      RETURNING id INTO log_id;
    END IF;

    rec := jsonb_build_object(
      'transaction_id', tx_id::text, 'account_id', r_account[i], 'type', r_type[i], 'amount', (-take)::text,
      'balance_after', bal[j]::text, 'description', r_desc[i], 'metadata', r_meta[i], 'payment_id', r_payment[i],
      'created_at', stamp, 'allocations', allocs, 'reserved', held[j]::text,
      'available', greatest(bal[j] - held[j] - pend[j], 0)::text, 'usage_log_id', log_id::text);
    IF log_id IS NOT NULL THEN
      rec := rec || jsonb_build_object(
        'operation_type', u->>'operation', 'cost_usd', coalesce(u->>'cost', ''), 'model', coalesce(u->>'model', ''),
        'tokens_input', coalesce(u->>'tokens_in', '0'), 'tokens_output', coalesce(u->>'tokens_out', '0'),
        'related_object_type', coalesce(u->>'related_type', ''), 'related_object_id', coalesce(u->>'related_id', ''),
        'cost_config_version_id', coalesce(u->>'cost_version', ''), 'model_price_version_id', coalesce(u->>'model_version', ''));
    END IF;
    IF r_key[i] IS NOT NULL THEN
      UPDATE idempotency_keys d SET response = rec WHERE d.account_id = r_account[i] AND d.key = r_key[i];
    END IF;
    ord := i; outcome := 'ok'; detail := rec;
    RETURN NEXT;
  END LOOP;

  -- 5. Each touched lot and each changed balance is written once.
  FOR k IN 1..l_count LOOP
    CONTINUE WHEN NOT l_touched[k];
    UPDATE credit_lots c SET remaining = l_rem[k],
      state = CASE WHEN l_rem[k] = 0 THEN 'exhausted' ELSE c.state END,
      closed_at = CASE WHEN l_rem[k] = 0 THEN now() ELSE c.closed_at END
    WHERE c.account_id = accts[l_acct[k]] AND c.id = l_id[k];
  END LOOP;
  -- Each balance write tells the balance trigger (billing_events.sql) whether
  -- usage took credits from it (a deduction or a reservation commit): only
  -- usage starts an auto top-up; refunds, voids, adjustments and expiries do not.
  FOR j IN 1..cardinality(accts) LOOP
    CONTINUE WHEN NOT changed[j];
    PERFORM set_config('billing.usage_debit', CASE WHEN used[j] THEN 'on' ELSE '' END, true);
    UPDATE billing_accounts a SET balance = bal[j], updated_at = now() WHERE a.account_id = accts[j];
  END LOOP;
  PERFORM set_config('billing.usage_debit', '', true);
END
$fn$;
