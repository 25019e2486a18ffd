-- sos-webhooks, fifth step: no read before the lock under SERIALIZABLE.
--
-- 0200000004 reads the committed record first. Under a SERIALIZABLE default that read of an
-- absent key takes a predicate (SIRead) lock on its index page, so claims of *different* new
-- events on one page formed read/write cycles and PostgreSQL cancelled many of them with 40001,
-- often at COMMIT after their handlers ran (adversarial test
-- toctou_dedupe_pg_serializable_default_distinct_fresh_events_all_processed). Under SERIALIZABLE
-- the claim goes back to 0200000003's order (lock, insert, read only on conflict); under READ
-- COMMITTED and REPEATABLE READ duplicates keep the lock-free read. The answers are unchanged.
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
