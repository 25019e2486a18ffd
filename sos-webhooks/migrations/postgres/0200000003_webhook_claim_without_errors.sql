-- sos-webhooks, third step: the transactional claim answers with a row instead of an error.
--
-- sos_webhooks_claim_v1 (0200000002) answered duplicates by raising SQLSTATEs, so that the
-- claim could share BEGIN's simple-query message. Every duplicate and in-flight delivery then
-- wrote an ERROR and its STATEMENT to the server log: a flood at the rates providers retry, and
-- alarms for operators. v2 is called with bind parameters after BEGIN and returns its answer.
DROP FUNCTION sos_webhooks_claim_v1(TEXT, TEXT, TEXT, BYTEA, TEXT, TIMESTAMPTZ, BIGINT);

-- Claims the event for the calling transaction, or says why not:
--   (true,  NULL,  NULL)  claimed; the row's ctid is in the transaction-local setting
--                         sos_webhooks.claim, for sos_webhooks_check_v1 before COMMIT
--   (false, state, hash)  a committed record answers
--   (false, NULL,  NULL)  another delivery holds the key's lock (its row is not committed)
-- The non-blocking advisory lock comes first, so that a second delivery never waits on the
-- uncommitted row of one in flight; then one arbitrated insert (no check-then-insert); the
-- committed record is read only when nothing was inserted.
CREATE FUNCTION sos_webhooks_claim_v2(
    p_tenant     TEXT,
    p_provider   TEXT,
    p_event_id   TEXT,
    p_body_hash  BYTEA,
    p_token      TEXT,
    p_now        TIMESTAMPTZ,
    p_lock       BIGINT,
    OUT claimed  BOOLEAN,
    OUT state    TEXT,
    OUT body_hash BYTEA
) LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_tid TID;
BEGIN
    claimed := false;
    IF pg_try_advisory_xact_lock(p_lock) THEN
        INSERT INTO sos_webhook_events AS e
            (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until,
             last_error, first_seen_at, updated_at)
        VALUES (p_tenant, p_provider, p_event_id, p_body_hash, 'processed', p_token, 1, p_now,
                NULL, p_now, p_now)
        ON CONFLICT (tenant, provider, event_id) DO NOTHING
        RETURNING e.ctid INTO v_tid;
        IF FOUND THEN
            PERFORM set_config('sos_webhooks.claim', v_tid::text, true);
            claimed := true;
            RETURN;
        END IF;
    END IF;
    SELECT e.state, e.body_hash INTO state, body_hash FROM sos_webhook_events AS e
     WHERE e.tenant = p_tenant AND e.provider = p_provider AND e.event_id = p_event_id;
END
$fn$;
