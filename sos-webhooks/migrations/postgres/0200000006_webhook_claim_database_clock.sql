-- sos-webhooks, sixth step: the transactional claim honours the database clock.
--
-- Up to 0200000005 the transactional claim stamped first_seen_at, updated_at and lease_until
-- with p_now, which the guard always bound from its own clock, even for a store built with
-- PgStore::with_database_clock(true). The guard now binds NULL in that mode, and the claim
-- stamps the record with statement_timestamp(), like every two-phase write in that mode. A
-- non-NULL p_now (the default, guard-clock mode, and binaries built before this step) is
-- stored as before. Nothing else changes: the order (the read first except under
-- SERIALIZABLE, then the non-blocking advisory lock, then one arbitrated insert) and the
-- answers are 0200000005's:
--   (true,  NULL,  NULL)  claimed; the row's ctid is in the transaction-local setting
--                         sos_webhooks.claim, for sos_webhooks_check_v1 before COMMIT
--   (false, state, hash)  a committed record answers
--   (false, NULL,  NULL)  another delivery holds the key's lock (its row is not committed)
CREATE OR REPLACE FUNCTION sos_webhooks_claim_v2(
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
    v_now TIMESTAMPTZ;
BEGIN
    claimed := false;
    IF current_setting('transaction_isolation') <> 'serializable' THEN
        SELECT e.state, e.body_hash INTO state, body_hash FROM sos_webhook_events AS e
         WHERE e.tenant = p_tenant AND e.provider = p_provider AND e.event_id = p_event_id;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    IF pg_try_advisory_xact_lock(p_lock) THEN
        v_now := COALESCE(p_now, statement_timestamp());
        INSERT INTO sos_webhook_events AS e
            (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until,
             last_error, first_seen_at, updated_at)
        VALUES (p_tenant, p_provider, p_event_id, p_body_hash, 'processed', p_token, 1, v_now,
                NULL, v_now, v_now)
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
