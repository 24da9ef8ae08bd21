/**
 * billing_deduct_batch: applies a batch of coalesced deductions in ONE
 * statement, hence one round trip and (called outside an explicit
 * transaction) one atomic commit. The Node side (src/domain/credits/
 * deduction-batcher.ts) prices and validates; this function only decides and
 * writes, with the semantics of one deduction per request:
 *
 * 1. Every idempotency key is claimed, in (account, key) order. A key that
 *    is taken (a replay, a racing retry, a reused key, or a duplicate within
 *    the batch) is answered 'taken' and nothing else is done for it.
 * 2. The batch's accounts are locked in account_id order (so batches of
 *    several processes never deadlock one another); open holds are read
 *    after the lock, in a fresh snapshot.
 * 3. In arrival order, each request either fits the available credits
 *    (balance - holds) left by the ones before it, or fails alone
 *    ('insufficient', with the credits that were available) and its key is
 *    released, so a retry is evaluated afresh.
 * 4. Accepted requests get their ledger row (DEDUCTION, balance_after), their
 *    usage log and their stored response, all with ids drawn up front and
 *    created_at = now(); the balances are written once per account.
 *
 * The stored response is the DeductResult of src/domain/credits/types.ts in
 * the encoding of encodeStored (src/domain/idempotency.ts); the function
 * returns that same text, so a caller's answer and a later replay are
 * byte-for-byte the same. test/credits/coalescing.test.ts holds the two
 * together.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  await sequelize.query(String.raw`
CREATE FUNCTION billing_deduct_batch(
  p_method text, p_account text[], p_key text[], p_hash text[], p_credits bigint[],
  p_description text[], p_metadata text[], p_operation text[], p_cost text[], p_model text[],
  p_tokens_in bigint[], p_tokens_out bigint[], p_related_type text[], p_related_id text[])
RETURNS TABLE (ord integer, outcome text, detail text)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  n        integer := coalesce(cardinality(p_account), 0);
  claimed  boolean[] := array_fill(false, ARRAY[n]);
  accepted boolean[] := array_fill(false, ARRAY[n]);
  bal_after bigint[] := array_fill(NULL::bigint, ARRAY[n]);
  shortfall bigint[] := array_fill(NULL::bigint, ARRAY[n]);
  slot     integer[] := array_fill(NULL::integer, ARRAY[n]);
  accts    text[];
  bal      bigint[];
  held     bigint[];
  changed  boolean[];
  j        integer;
  k        integer := 0;
  o        integer;
  rows_i   integer[] := '{}';
  tx_ids   bigint[];
  log_ids  bigint[];
  resp_i   integer[];
  resp     text[];
  stamp    text := to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
BEGIN
  IF n = 0 THEN RETURN; END IF;

  -- 1. Claim the keys; a request whose key was not claimed here is 'taken'.
  FOR o IN
    WITH ins AS (
      INSERT INTO idempotency_keys (account_id, key, method, request_hash, response)
      SELECT x.a, x.k, p_method, x.h, 'null'::jsonb
      FROM unnest(p_account, p_key, p_hash) WITH ORDINALITY AS x(a, k, h, i) ORDER BY x.a, x.k, x.i
      ON CONFLICT (account_id, key) DO NOTHING
      RETURNING account_id, key)
    SELECT min(x.i)::integer FROM ins JOIN unnest(p_account, p_key) WITH ORDINALITY AS x(a, k, i)
      ON x.a = ins.account_id AND x.k = ins.key GROUP BY x.a, x.k
  LOOP
    claimed[o] := true;
  END LOOP;

  -- 2. Lock the accounts in a fixed order, then read their open holds.
  SELECT coalesce(array_agg(l.account_id ORDER BY l.account_id), '{}'), coalesce(array_agg(l.balance ORDER BY l.account_id), '{}')
    INTO accts, bal
  FROM (SELECT a.account_id, a.balance FROM billing_accounts a
        WHERE a.account_id = ANY (SELECT p_account[s.i] FROM generate_subscripts(p_account, 1) AS s(i) WHERE claimed[s.i])
        ORDER BY a.account_id FOR UPDATE) l;
  SELECT coalesce(array_agg(coalesce(r.reserved, 0) ORDER BY u.i), '{}') INTO held
  FROM unnest(accts) WITH ORDINALITY AS u(id, i)
  LEFT JOIN LATERAL (SELECT sum(c.credits)::bigint AS reserved FROM credit_reservations c
                     WHERE c.account_id = u.id AND c.status = 'active' AND c.expires_at > now()) r ON true;
  changed := array_fill(false, ARRAY[greatest(cardinality(accts), 1)]);

  -- 3. Decide in arrival order.
  FOR i IN 1..n LOOP
    CONTINUE WHEN NOT claimed[i];
    j := array_position(accts, p_account[i]);
    IF j IS NOT NULL AND bal[j] - held[j] >= p_credits[i] THEN
      bal[j] := bal[j] - p_credits[i];
      changed[j] := true;
      accepted[i] := true;
      bal_after[i] := bal[j];
      slot[i] := j;
      k := k + 1;
      rows_i := rows_i || i;
    ELSE
      shortfall[i] := CASE WHEN j IS NULL THEN 0 ELSE greatest(bal[j] - held[j], 0) END;
    END IF;
  END LOOP;

  -- Failed requests store nothing under their keys.
  DELETE FROM idempotency_keys d USING generate_subscripts(p_account, 1) AS g(i)
  WHERE claimed[g.i] AND NOT accepted[g.i] AND d.account_id = p_account[g.i] AND d.key = p_key[g.i];

  IF k > 0 THEN
    -- 4. Write: balances once per account, then ledger rows, usage logs and stored responses.
    UPDATE billing_accounts a SET balance = v.b, updated_at = now()
    FROM unnest(accts, bal, changed) AS v(id, b, c) WHERE v.c AND a.account_id = v.id;

    SELECT array_agg(nextval('credit_transactions_id_seq')), array_agg(nextval('credit_usage_logs_id_seq'))
      INTO tx_ids, log_ids FROM generate_series(1, k);

    INSERT INTO credit_transactions (account_id, id, type, amount, balance_after, description, metadata, created_at)
    OVERRIDING SYSTEM VALUE
    SELECT p_account[b.i], b.tx_id, 'deduction', -p_credits[b.i], bal_after[b.i], p_description[b.i], p_metadata[b.i]::jsonb, now()
    FROM unnest(rows_i, tx_ids, log_ids) AS b(i, tx_id, log_id) ORDER BY b.i;

    INSERT INTO credit_usage_logs (account_id, id, transaction_id, operation_type, credits_used, cost_usd, model_used,
                                   tokens_input, tokens_output, related_object_type, related_object_id, metadata, created_at)
    OVERRIDING SYSTEM VALUE
    SELECT p_account[b.i], b.log_id, b.tx_id, p_operation[b.i], p_credits[b.i], nullif(p_cost[b.i], '')::numeric, p_model[b.i],
           p_tokens_in[b.i], p_tokens_out[b.i], p_related_type[b.i], p_related_id[b.i], p_metadata[b.i]::jsonb, now()
    FROM unnest(rows_i, tx_ids, log_ids) AS b(i, tx_id, log_id) ORDER BY b.i;

    WITH stored AS (
    UPDATE idempotency_keys d SET response = jsonb_build_object(
      'transaction', jsonb_build_object(
        'id', b.tx_id::text, 'accountId', p_account[b.i], 'type', 'deduction',
        'amount', jsonb_build_object('$n', (-p_credits[b.i])::text),
        'balanceAfter', jsonb_build_object('$n', bal_after[b.i]::text),
        'description', p_description[b.i], 'metadata', p_metadata[b.i]::jsonb, 'paymentId', '',
        'createdAt', jsonb_build_object('$d', stamp)),
      'usageLog', jsonb_build_object(
        'id', b.log_id::text, 'accountId', p_account[b.i], 'operationType', p_operation[b.i],
        'creditsUsed', jsonb_build_object('$n', p_credits[b.i]::text), 'costUsd', p_cost[b.i], 'modelUsed', p_model[b.i],
        'tokensInput', jsonb_build_object('$n', p_tokens_in[b.i]::text), 'tokensOutput', jsonb_build_object('$n', p_tokens_out[b.i]::text),
        'relatedObjectType', p_related_type[b.i], 'relatedObjectId', p_related_id[b.i],
        'metadata', p_metadata[b.i]::jsonb, 'createdAt', jsonb_build_object('$d', stamp)),
      'balance', jsonb_build_object(
        'accountId', p_account[b.i],
        'balance', jsonb_build_object('$n', bal_after[b.i]::text),
        'reserved', jsonb_build_object('$n', held[slot[b.i]]::text),
        'available', jsonb_build_object('$n', greatest(bal_after[b.i] - held[slot[b.i]], 0)::text),
        'updatedAt', jsonb_build_object('$d', stamp)))
    FROM unnest(rows_i, tx_ids, log_ids) AS b(i, tx_id, log_id)
    WHERE d.account_id = p_account[b.i] AND d.key = p_key[b.i]
    RETURNING b.i, d.response::text AS r)
    SELECT array_agg(stored.i), array_agg(stored.r) INTO resp_i, resp FROM stored;
  END IF;

  RETURN QUERY
    SELECT g.i::integer,
           CASE WHEN accepted[g.i] THEN 'ok' WHEN claimed[g.i] THEN 'insufficient' ELSE 'taken' END,
           CASE WHEN accepted[g.i] THEN s.r WHEN claimed[g.i] THEN shortfall[g.i]::text END
    FROM generate_subscripts(p_account, 1) g(i)
    LEFT JOIN unnest(resp_i, resp) AS s(i, r) ON s.i = g.i
    ORDER BY g.i;
END
$fn$;`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`DROP FUNCTION IF EXISTS billing_deduct_batch(text, text[], text[], text[], bigint[], text[], text[], text[], text[], text[], bigint[], bigint[], text[], text[])`);
};
