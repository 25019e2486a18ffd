-- sos-webhooks, second step: key columns may not be empty (the guard refuses empty parts before
-- the database; this makes the database refuse them too, whoever writes).
--
-- SQLite cannot add a CHECK constraint to a table, so the table is rebuilt with the same
-- columns, types and key plus the new checks, inside this migration's transaction (SQLite's
-- documented procedure: https://www.sqlite.org/lang_altertable.html#otheralter). Nothing else
-- refers to the table (no index besides the key, no trigger, view or foreign key), so copying,
-- dropping and renaming is the whole procedure. A row with an empty key part, which no version
-- of the guard could write, would fail the copy and leave the migration unapplied.
CREATE TABLE sos_webhook_events_v2 (
    tenant        TEXT    NOT NULL CHECK (tenant <> ''),
    provider      TEXT    NOT NULL CHECK (provider <> ''),
    event_id      TEXT    NOT NULL CHECK (event_id <> ''),
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

INSERT INTO sos_webhook_events_v2
    (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until, last_error,
     first_seen_at, updated_at)
SELECT tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until, last_error,
       first_seen_at, updated_at
  FROM sos_webhook_events;

DROP TABLE sos_webhook_events;

ALTER TABLE sos_webhook_events_v2 RENAME TO sos_webhook_events;
