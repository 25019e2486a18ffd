-- sos-webhooks: one dedupe record per (tenant, provider, event id).
-- Every key column is NOT NULL (named shape unique-null). Times are Unix microseconds.
CREATE TABLE sos_webhook_events (
    tenant        TEXT    NOT NULL,
    provider      TEXT    NOT NULL,
    event_id      TEXT    NOT NULL,
    body_hash     BLOB    NOT NULL CHECK (length(body_hash) = 32),
    state         TEXT    NOT NULL CHECK (state IN ('processing', 'processed', 'failed')),
    claim_token   TEXT    NOT NULL,
    attempts      INTEGER NOT NULL CHECK (attempts >= 1),
    lease_until   INTEGER NOT NULL,
    last_error    TEXT,
    first_seen_at INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (tenant, provider, event_id)
) STRICT;

-- No index besides the key: every claim would pay for it, and the retention purge (a rare
-- housekeeping DELETE by age) can afford a scan.
