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
 *    usage log and their stored response, all with created_at = now(); each
 *    changed balance is written once. Returned rows follow arrival order;
 *    nothing is visible to anyone before the statement commits.
 *
 * The stored response is the DeductResult of src/domain/credits/types.ts in
 * the encoding of encodeStored (src/domain/idempotency.ts); the function
 * returns that same text, so a caller's answer and a later replay are
 * byte-for-byte the same. test/credits/ledger.test.ts ("answers with exactly what the
 * ledger, the usage log and the balance hold") holds the two
 * together. Metadata goes into the response as given, which matches
 * encodeStored only while no key starts with "$" (encodeStored escapes
 * those): the ledger sends such deductions through its single path.
 */
import type { Migration } from "../migrate.js";

export const up: Migration = async ({ context: sequelize }) => {
  // Written as loops of simple statements: PL/pgSQL caches a generic plan for
  // each (primary-key lookups and single-row inserts), so a batch costs no
  // planning; set-based statements over the input arrays were re-planned on
  // every call and cost more for the small batches of a quiet service.
  await sequelize.query(String.raw`
CREATE FUNCTION billing_deduct_batch(
  p_method text, p_account text[], p_key text[], p_hash text[], p_credits bigint[],
  p_description text[], p_metadata text[], p_operation text[], p_cost text[], p_model text[],
  p_tokens_in bigint[], p_tokens_out bigint[], p_related_type text[], p_related_id text[])
RETURNS TABLE (ord integer, outcome text, detail text)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
  n         integer := coalesce(cardinality(p_account), 0);
  claimed   boolean[] := array_fill(false, ARRAY[n]);
  accts     text[];
  bal       bigint[];
  held      bigint[];
  changed   boolean[];
  j         integer;
  i         integer;
  available bigint;
  tx_id     bigint;
  log_id    bigint;
  meta      jsonb;
  stamp     jsonb := jsonb_build_object('$d', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
  answer    jsonb;
  reserved  bigint;
BEGIN
  IF n = 0 THEN RETURN; END IF;

  -- 1. Claim the keys in (account, key) order; a key not claimed is 'taken'.
  FOR i IN SELECT s.i FROM generate_subscripts(p_account, 1) AS s(i) ORDER BY p_account[s.i], p_key[s.i], s.i LOOP
    INSERT INTO idempotency_keys (account_id, key, method, request_hash, response)
    VALUES (p_account[i], p_key[i], p_method, p_hash[i], 'null'::jsonb)
    ON CONFLICT (account_id, key) DO NOTHING;
    claimed[i] := FOUND;
  END LOOP;

  -- 2. Lock the accounts in a fixed order, then read their open holds (a fresh snapshot, after the lock).
  SELECT coalesce(array_agg(l.account_id ORDER BY l.account_id), '{}'), coalesce(array_agg(l.balance ORDER BY l.account_id), '{}')
    INTO accts, bal
  FROM (SELECT a.account_id, a.balance FROM billing_accounts a
        WHERE a.account_id = ANY (p_account) ORDER BY a.account_id FOR UPDATE) l;
  held := array_fill(0::bigint, ARRAY[greatest(cardinality(accts), 1)]);
  changed := array_fill(false, ARRAY[greatest(cardinality(accts), 1)]);
  FOR j IN 1..cardinality(accts) LOOP
    SELECT coalesce(sum(c.credits), 0)::bigint INTO reserved FROM credit_reservations c
    WHERE c.account_id = accts[j] AND c.status = 'active' AND c.expires_at > now();
    held[j] := reserved;
  END LOOP;

  -- 3. In arrival order: each request fits what is left, or fails alone.
  FOR i IN 1..n LOOP
    IF NOT claimed[i] THEN
      ord := i; outcome := 'taken'; detail := NULL;
      RETURN NEXT;
      CONTINUE;
    END IF;
    j := array_position(accts, p_account[i]);
    available := CASE WHEN j IS NULL THEN 0 ELSE bal[j] - held[j] END;
    IF available < p_credits[i] THEN
      -- Failed requests store nothing under their keys.
      DELETE FROM idempotency_keys d WHERE d.account_id = p_account[i] AND d.key = p_key[i];
      ord := i; outcome := 'insufficient'; detail := greatest(available, 0)::text;
      RETURN NEXT;
      CONTINUE;
    END IF;
    bal[j] := bal[j] - p_credits[i];
    changed[j] := true;
    meta := p_metadata[i]::jsonb;

    INSERT INTO credit_transactions (account_id, type, amount, balance_after, description, metadata)
    VALUES (p_account[i], 'deduction', -p_credits[i], bal[j], p_description[i], meta)
    RETURNING id INTO tx_id;
    INSERT INTO credit_usage_logs (account_id, transaction_id, operation_type, credits_used, cost_usd, model_used,
                                   tokens_input, tokens_output, related_object_type, related_object_id, metadata)
    VALUES (p_account[i], tx_id, p_operation[i], p_credits[i], nullif(p_cost[i], '')::numeric, p_model[i],
            p_tokens_in[i], p_tokens_out[i], p_related_type[i], p_related_id[i], meta)
    RETURNING id INTO log_id;

    answer := jsonb_build_object(
      'transaction', jsonb_build_object(
        'id', tx_id::text, 'accountId', p_account[i], 'type', 'deduction',
        'amount', jsonb_build_object('$n', (-p_credits[i])::text),
        'balanceAfter', jsonb_build_object('$n', bal[j]::text),
        'description', p_description[i], 'metadata', meta, 'paymentId', '', 'createdAt', stamp),
      'usageLog', jsonb_build_object(
        'id', log_id::text, 'accountId', p_account[i], 'operationType', p_operation[i],
        'creditsUsed', jsonb_build_object('$n', p_credits[i]::text), 'costUsd', p_cost[i], 'modelUsed', p_model[i],
        'tokensInput', jsonb_build_object('$n', p_tokens_in[i]::text), 'tokensOutput', jsonb_build_object('$n', p_tokens_out[i]::text),
        'relatedObjectType', p_related_type[i], 'relatedObjectId', p_related_id[i], 'metadata', meta, 'createdAt', stamp),
      'balance', jsonb_build_object(
        'accountId', p_account[i],
        'balance', jsonb_build_object('$n', bal[j]::text),
        'reserved', jsonb_build_object('$n', held[j]::text),
        'available', jsonb_build_object('$n', greatest(bal[j] - held[j], 0)::text),
        'updatedAt', stamp));
    UPDATE idempotency_keys d SET response = answer WHERE d.account_id = p_account[i] AND d.key = p_key[i];
    ord := i; outcome := 'ok'; detail := answer::text;
    RETURN NEXT;
  END LOOP;

  -- 4. Each changed balance is written once.
  FOR j IN 1..cardinality(accts) LOOP
    CONTINUE WHEN NOT changed[j];
    UPDATE billing_accounts a SET balance = bal[j], updated_at = now() WHERE a.account_id = accts[j];
  END LOOP;
END
$fn$;`);
};

export const down: Migration = async ({ context: sequelize }) => {
  await sequelize.query(`DROP FUNCTION IF EXISTS billing_deduct_batch(text, text[], text[], text[], bigint[], text[], text[], text[], text[], text[], bigint[], bigint[], text[], text[])`);
};
