-- sos-webhooks, second step.
--
-- 1. Key columns may not be empty (the guard refuses empty parts before the database; this makes
--    the database refuse them too, whoever writes). Validating scans the table once.
ALTER TABLE sos_webhook_events
    ADD CONSTRAINT sos_webhook_events_tenant_not_empty CHECK (tenant <> ''),
    ADD CONSTRAINT sos_webhook_events_provider_not_empty CHECK (provider <> ''),
    ADD CONSTRAINT sos_webhook_events_event_id_not_empty CHECK (event_id <> '');

-- 2. The transactional claim, called in the same simple-query message as BEGIN so that opening
--    the transaction and claiming the event cost one round trip. It answers through errors with
--    the guard's own SQLSTATEs (the caller rolls back):
--      SWP01 the event is processed (same body)     SWB01 the event is known with another body
--      SWI01 another delivery holds the event        SWM01 an unfinished two-phase record
--    On success the new row's ctid is left in the transaction-local setting
--    sos_webhooks.claim for sos_webhooks_check_v1.
--
--    Order: the non-blocking advisory lock first, so that a second delivery never waits on the
--    uncommitted row of one in flight; then one arbitrated insert (no check-then-insert); only
--    when it inserted nothing is the committed record read, to answer.
CREATE FUNCTION sos_webhooks_claim_v1(
    p_tenant     TEXT,
    p_provider   TEXT,
    p_event_id   TEXT,
    p_body_hash  BYTEA,
    p_token      TEXT,
    p_now        TIMESTAMPTZ,
    p_lock       BIGINT
) RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_tid   TID;
    v_state TEXT;
    v_hash  BYTEA;
BEGIN
    IF pg_try_advisory_xact_lock(p_lock) THEN
        INSERT INTO sos_webhook_events
            (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until,
             last_error, first_seen_at, updated_at)
        VALUES (p_tenant, p_provider, p_event_id, p_body_hash, 'processed', p_token, 1, p_now,
                NULL, p_now, p_now)
        ON CONFLICT (tenant, provider, event_id) DO NOTHING
        RETURNING ctid INTO v_tid;
        IF FOUND THEN
            PERFORM set_config('sos_webhooks.claim', v_tid::text, true);
            RETURN;
        END IF;
    END IF;
    SELECT state, body_hash INTO v_state, v_hash FROM sos_webhook_events
     WHERE tenant = p_tenant AND provider = p_provider AND event_id = p_event_id;
    IF NOT FOUND THEN
        -- The lock is held by a delivery in flight (its row is not committed yet).
        RAISE EXCEPTION 'sos-webhooks: another delivery of this event is in flight' USING ERRCODE = 'SWI01';
    ELSIF v_hash <> p_body_hash THEN
        RAISE EXCEPTION 'sos-webhooks: the event is known with another body' USING ERRCODE = 'SWB01';
    ELSIF v_state = 'processed' THEN
        RAISE EXCEPTION 'sos-webhooks: the event is already processed' USING ERRCODE = 'SWP01';
    ELSE
        RAISE EXCEPTION 'sos-webhooks: the event has an unfinished two-phase record (%)', v_state
            USING ERRCODE = 'SWM01';
    END IF;
END
$fn$;

-- 3. The check before COMMIT: PostgreSQL turns the COMMIT of an aborted transaction into a
--    silent rollback, so the guard first makes sure the transaction is alive (any statement in
--    an aborted one fails with 25P02) and its claim row still stands (SWG01 otherwise).
CREATE FUNCTION sos_webhooks_check_v1(p_token TEXT) RETURNS void LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    PERFORM 1 FROM sos_webhook_events
     WHERE ctid = current_setting('sos_webhooks.claim')::tid AND claim_token = p_token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'sos-webhooks: the claim row is gone' USING ERRCODE = 'SWG01';
    END IF;
END
$fn$;
