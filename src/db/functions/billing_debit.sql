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
--   key, hash    idempotency: a stored key is answered from what it stored
--                ('replay'), 'reused' for another request, or 'taken' when
--                an earlier request of this very statement carries it; a
--                request that debits stores its record under its key
--   usage        {operation, cost, model, tokens_in, tokens_out, related_type,
--                related_id, cost_version, model_version}: also write a
--                credit_usage_logs row (with the price version ids it was priced with)
-- p_accounts: more accounts to bring up to date (expire their due lots)
-- without debiting them.
--
-- The rule, per statement:
-- 1. Accounts are locked in account order (so no two of these statements
--    deadlock one another);
--    holds are read after the lock, for all of them in one query.
-- 2. Keys: the ones already stored are read in one query and answered from
--    what they stored ('replay'), or 'reused' for another request; a key
--    that an earlier request of this statement carries is 'taken'.
-- 3. Lots of those accounts that reached expires_at leave the balance first,
--    each through an EXPIRATION ledger row: a credit is never both spent and
--    expired, and no balance includes expired credits.
-- 4. Available = balance - open holds - credits of lots not yet effective.
-- 5. In arrival order, each request draws from its account's usable lots in
--    burn order: priority (lower first), then soonest expires_at (never
--    expiring last), then oldest, then id. Its ledger row records the
--    allocations ([{lot_id, amount}]) and balance_after. This step only
--    computes; a request that does not fit fails alone and writes nothing.
-- 6. Then each table is written once, set-based: the ledger rows, the usage
--    logs, the keys (each stored once, with its final record, in (account,
--    key) order), the touched lots, the changed balances. A key stored
--    meanwhile by a transaction that did not hold the account lock (another
--    method using the same key) fails the statement with a serialization
--    failure (40001): it wrote nothing, and a retry answers from that key.
--    If that transaction is still open, the key insert waits for it; if it
--    then needs one of these accounts (runIdempotent claims a key before
--    its effect locks the account), PostgreSQL reports a deadlock after
--    deadlock_timeout (1 s) and the victim is retried. It takes one key
--    sent to two methods at once, a caller's mistake; the answers stay
--    exact (ALREADY_EXISTS), only that batch waits a second.
-- Each returned row: ord (1-based request index; 0 for a lot that expired,
-- detail {account_id, amount}), outcome (ok, empty, insufficient, replay,
-- reused, taken, expired) and detail: for ok/replay the debit
-- record that src/domain/credits/debit.ts reads (and that a keyed
-- request stores as its idempotent response), for insufficient
-- {"available": n}.
-- Plans: every statement below reads by key, and batches vary in size, so
-- each is planned once per connection (generic plans, no planning per call)
-- with table scans off: a generic plan made while a table was still small
-- (a new database, a test) would otherwise keep scanning it whole, measured
-- at 4x the statement's cost on 2,000 accounts.
CREATE OR REPLACE FUNCTION billing_debit(p_method text, p_requests jsonb, p_accounts text[] DEFAULT '{}')
RETURNS TABLE (ord integer, outcome text, detail jsonb)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $fn$
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
  a_first    integer[];
  a_last     integer[];
  l_id       uuid[];
  l_acct     integer[];
  l_rem      bigint[];
  l_pending  boolean[];
  l_touched  boolean[];
  l_count    integer := 0;
  -- The requests that debit (w_*), in arrival order, and their usage logs (u_*).
  m          integer := 0;
  w_ord      integer[] := '{}';
  w_acct     text[] := '{}';
  w_type     text[] := '{}';
  w_amount   bigint[] := '{}';
  w_bal      bigint[] := '{}';
  w_desc     text[] := '{}';
  w_meta     jsonb[] := '{}';
  w_payment  uuid[] := '{}';
  w_allocs   jsonb[] := '{}';
  w_avail    bigint[] := '{}';
  w_held     bigint[] := '{}';
  w_tx       bigint[] := '{}';
  w_log      bigint[];
  w_rec      jsonb[] := '{}';
  u_count    integer := 0;
  u_at       integer[] := '{}';
  u_id       bigint[] := '{}';
  u_tx       bigint[] := '{}';
  u_acct     text[] := '{}';
  u_op       text[] := '{}';
  u_credits  bigint[] := '{}';
  u_cost     numeric[] := '{}';
  u_model    text[] := '{}';
  u_in       bigint[] := '{}';
  u_out      bigint[] := '{}';
  u_rtype    text[] := '{}';
  u_rid      text[] := '{}';
  u_meta     jsonb[] := '{}';
  u_cver     bigint[] := '{}';
  u_mver     bigint[] := '{}';
  keyed      integer := 0;
  to_store   integer := 0;
  expired    boolean := false;
  r_txid     bigint[];
  r_logid    bigint[];
  stored_n   integer;
  i          integer;
  j          integer;
  k          integer;
  lot        record;
  stored     record;
  available  bigint;
  take       bigint;
  part       bigint;
  allocs     jsonb;
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
         array_agg(e->'usage' ORDER BY e_n),
         count(e->>'key')
    INTO r_account, r_key, r_hash, r_credits, r_type, r_desc, r_meta, r_payment, r_mode, r_lot, r_usage, keyed
  FROM jsonb_array_elements(coalesce(p_requests, '[]'::jsonb)) WITH ORDINALITY AS x(e, e_n);
  decided := array_fill(NULL::text, ARRAY[greatest(n, 1)]);
  answer := array_fill(NULL::jsonb, ARRAY[greatest(n, 1)]);

  -- 1. Lock the accounts in a fixed order; read their holds after the lock.
  SELECT coalesce(array_agg(l.account_id ORDER BY l.account_id), '{}'), coalesce(array_agg(l.balance ORDER BY l.account_id), '{}')
    INTO accts, bal
  FROM (SELECT a.account_id, a.balance FROM billing_accounts a
        WHERE a.account_id = ANY (r_account || p_accounts) ORDER BY a.account_id FOR UPDATE) l;
  -- Ledger and usage log ids are drawn here, under the locks and in arrival
  -- order (a request that ends up writing nothing leaves a gap, as sequences
  -- do), so that an account's ledger in id order is its order of balance
  -- changes, and each record can name its rows with no statement to ask.
  SELECT coalesce(array_agg(h.reserved ORDER BY a.o), '{}'),
         (SELECT array_agg(nextval('credit_transactions_id_seq'::regclass)) FROM generate_series(1, n)),
         (SELECT array_agg(nextval('credit_usage_logs_id_seq'::regclass)) FROM generate_series(1, n))
    INTO held, r_txid, r_logid
  FROM unnest(accts) WITH ORDINALITY AS a(acct, o) CROSS JOIN LATERAL billing_reserved(a.acct) h;
  pend := array_fill(0::bigint, ARRAY[greatest(cardinality(accts), 1)]);
  changed := array_fill(false, ARRAY[greatest(cardinality(accts), 1)]);
  used := array_fill(false, ARRAY[greatest(cardinality(accts), 1)]);
  a_first := array_fill(NULL::integer, ARRAY[greatest(cardinality(accts), 1)]);
  a_last := array_fill(NULL::integer, ARRAY[greatest(cardinality(accts), 1)]);

  -- 2. Keys already stored, in one read; a key carried twice is the first carrier's.
  IF keyed > 0 THEN
    FOR stored IN
      SELECT q.i, q.carrier, d.request_hash, d.response, d.key IS NOT NULL AS found
      FROM (SELECT q.account_id, q.key, q.i, row_number() OVER (PARTITION BY q.account_id, q.key ORDER BY q.i) AS carrier
            FROM unnest(r_account, r_key) WITH ORDINALITY AS q(account_id, key, i) WHERE q.key IS NOT NULL) q
      LEFT JOIN idempotency_keys d ON d.account_id = q.account_id AND d.key = q.key
      WHERE q.carrier > 1 OR d.key IS NOT NULL
    LOOP
      i := stored.i;
      IF NOT stored.found OR stored.response IS NULL OR stored.response = 'null'::jsonb THEN
        decided[i] := 'taken';           -- an earlier request of this statement carries it (or a stored key left without its answer)
      ELSIF stored.request_hash = r_hash[i] THEN
        decided[i] := 'replay'; answer[i] := stored.response;
      ELSE
        decided[i] := 'reused';
      END IF;
    END LOOP;
  END IF;

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
      expired := true;
      ord := 0; outcome := 'expired'; detail := jsonb_build_object('account_id', lot.account_id, 'amount', lot.remaining::text);
      RETURN NEXT;
      CONTINUE;
    END IF;
    l_count := l_count + 1;
    IF a_first[j] IS NULL THEN a_first[j] := l_count; END IF;
    a_last[j] := l_count;
    l_id[l_count] := lot.id;
    l_acct[l_count] := j;
    l_rem[l_count] := lot.remaining;
    l_pending[l_count] := lot.effective_at IS NOT NULL AND lot.effective_at > now();
    l_touched[l_count] := false;
    -- The same sum as billing_pending, taken from the lots this loop reads anyway (no second scan).
    IF l_pending[l_count] THEN pend[j] := pend[j] + lot.remaining; END IF;
  END LOOP;

  -- The ledger is read in id order: the requests' rows come after the EXPIRATION rows just written.
  IF expired THEN
    SELECT array_agg(nextval('credit_transactions_id_seq'::regclass)) INTO r_txid FROM generate_series(1, n);
  END IF;

  -- 4-5. In arrival order: each request is taken from its lots, or fails alone. Nothing is written yet.
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
      ord := i; outcome := 'insufficient';
      detail := jsonb_build_object('available', (CASE WHEN r_lot[i] IS NULL THEN available ELSE take END)::text);
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF take <= 0 THEN
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
      FOR k IN coalesce(a_first[j], 1)..coalesce(a_last[j], 0) LOOP
        EXIT WHEN part = 0;
        CONTINUE WHEN l_pending[k] OR l_rem[k] = 0;
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
    IF r_key[i] IS NOT NULL THEN to_store := to_store + 1; END IF;

    m := m + 1;
    w_ord[m] := i; w_tx[m] := r_txid[i]; w_acct[m] := r_account[i]; w_type[m] := r_type[i]; w_amount[m] := -take; w_bal[m] := bal[j];
    w_desc[m] := r_desc[i]; w_meta[m] := r_meta[i]; w_payment[m] := r_payment[i]; w_allocs[m] := allocs;
    w_held[m] := held[j]; w_avail[m] := greatest(bal[j] - held[j] - pend[j], 0);
  END LOOP;

  IF m > 0 THEN
    -- 6. Write each table once.
    INSERT INTO credit_transactions (id, account_id, type, amount, balance_after, description, metadata, payment_id, allocations)
    OVERRIDING SYSTEM VALUE
    SELECT * FROM unnest(w_tx, w_acct, w_type, w_amount, w_bal, w_desc, w_meta, w_payment, w_allocs);

    w_log := array_fill(NULL::bigint, ARRAY[m]);
    FOR k IN 1..m LOOP
      u := r_usage[w_ord[k]];
      CONTINUE WHEN u IS NULL OR jsonb_typeof(u) <> 'object';
      u_count := u_count + 1;
      u_at[u_count] := k; u_id[u_count] := r_logid[w_ord[k]];
      u_tx[u_count] := w_tx[k]; u_acct[u_count] := w_acct[k]; u_op[u_count] := u->>'operation';
      u_credits[u_count] := -w_amount[k]; u_cost[u_count] := nullif(u->>'cost', '')::numeric;
      u_model[u_count] := coalesce(u->>'model', ''); u_in[u_count] := coalesce((u->>'tokens_in')::bigint, 0);
      u_out[u_count] := coalesce((u->>'tokens_out')::bigint, 0); u_rtype[u_count] := coalesce(u->>'related_type', '');
      u_rid[u_count] := coalesce(u->>'related_id', ''); u_meta[u_count] := w_meta[k];
      u_cver[u_count] := nullif(u->>'cost_version', '')::bigint; u_mver[u_count] := nullif(u->>'model_version', '')::bigint;
    END LOOP;
    IF u_count > 0 THEN
      INSERT INTO credit_usage_logs (id, transaction_id, account_id, operation_type, credits_used, cost_usd, model_used,
                                     tokens_input, tokens_output, related_object_type, related_object_id, metadata,
                                     cost_config_version_id, model_price_version_id)
      OVERRIDING SYSTEM VALUE
      SELECT * FROM unnest(u_id, u_tx, u_acct, u_op, u_credits, u_cost, u_model, u_in, u_out, u_rtype, u_rid, u_meta, u_cver, u_mver);
      FOR k IN 1..u_count LOOP w_log[u_at[k]] := u_id[k]; END LOOP;
    END IF;

    -- The debit records: each request's answer, and what its key stores.
    FOR k IN 1..m LOOP
      i := w_ord[k];
      rec := jsonb_build_object(
        'transaction_id', w_tx[k]::text, 'account_id', w_acct[k], 'type', w_type[k], 'amount', w_amount[k]::text,
        'balance_after', w_bal[k]::text, 'description', w_desc[k], 'metadata', w_meta[k], 'payment_id', w_payment[k],
        'created_at', stamp, 'allocations', w_allocs[k], 'reserved', w_held[k]::text,
        'available', w_avail[k]::text, 'usage_log_id', w_log[k]::text);
      IF w_log[k] IS NOT NULL THEN
        u := r_usage[i];
        rec := rec || jsonb_build_object(
          'operation_type', u->>'operation', 'cost_usd', coalesce(u->>'cost', ''), 'model', coalesce(u->>'model', ''),
          'tokens_input', coalesce(u->>'tokens_in', '0'), 'tokens_output', coalesce(u->>'tokens_out', '0'),
          'related_object_type', coalesce(u->>'related_type', ''), 'related_object_id', coalesce(u->>'related_id', ''),
          'cost_config_version_id', coalesce(u->>'cost_version', ''), 'model_price_version_id', coalesce(u->>'model_version', ''));
      END IF;
      w_rec[k] := rec;
    END LOOP;

    -- Each key once, with its record, in (account, key) order. A conflict
    -- means a transaction that did not hold the account lock stored the key
    -- after step 2 read: this statement must not answer as if it had not.
    IF to_store > 0 THEN
      WITH stored_keys AS (
        INSERT INTO idempotency_keys (account_id, key, method, request_hash, response)
        SELECT r_account[x.i], r_key[x.i], p_method, r_hash[x.i], x.rec
        FROM unnest(w_ord, w_rec) AS x(i, rec)
        WHERE r_key[x.i] IS NOT NULL
        ORDER BY r_account[x.i], r_key[x.i]
        ON CONFLICT (account_id, key) DO NOTHING
        RETURNING 1)
      SELECT count(*) INTO stored_n FROM stored_keys;
      IF stored_n < to_store THEN
        RAISE EXCEPTION 'billing_debit: an idempotency key was stored concurrently; retry'
          USING ERRCODE = 'serialization_failure';
      END IF;
    END IF;
  END IF;

  -- Each touched lot and each changed balance is written once.
  IF true = ANY (l_touched) THEN
  UPDATE credit_lots c SET remaining = x.rem,
    state = CASE WHEN x.rem = 0 THEN 'exhausted' ELSE c.state END,
    closed_at = CASE WHEN x.rem = 0 THEN now() ELSE c.closed_at END
  FROM unnest(l_id, l_acct, l_rem, l_touched) AS x(id, j, rem, touched)
  WHERE x.touched AND c.account_id = accts[x.j] AND c.id = x.id;
  END IF;
  -- Each balance write tells the balance trigger (billing_events.sql) whether
  -- usage took credits from it (a deduction or a reservation commit): only
  -- usage starts an auto top-up; refunds, voids, adjustments and expiries
  -- do not. So balances are written by two statements: usage, then the rest.
  IF true = ANY (used) THEN
    PERFORM set_config('billing.usage_debit', 'on', true);
    UPDATE billing_accounts a SET balance = x.bal, updated_at = now()
    FROM unnest(accts, bal, changed, used) AS x(acct, bal, changed, used)
    WHERE x.used AND a.account_id = x.acct;
    PERFORM set_config('billing.usage_debit', '', true);
  END IF;
  IF EXISTS (SELECT 1 FROM unnest(changed, used) AS x(changed, used) WHERE x.changed AND NOT x.used) THEN
    UPDATE billing_accounts a SET balance = x.bal, updated_at = now()
    FROM unnest(accts, bal, changed, used) AS x(acct, bal, changed, used)
    WHERE x.changed AND NOT x.used AND a.account_id = x.acct;
  END IF;

  FOR k IN 1..m LOOP
    ord := w_ord[k]; outcome := 'ok'; detail := w_rec[k];
    RETURN NEXT;
  END LOOP;
END
$fn$;
