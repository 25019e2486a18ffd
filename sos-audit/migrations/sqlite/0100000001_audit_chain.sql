-- sos-audit: per-tenant hash chains. Entries are write-once; the head row holds each chain's end.
CREATE TABLE audit_entries (
    tenant    TEXT    NOT NULL,
    seq       INTEGER NOT NULL CHECK (seq >= 1),
    time_us   INTEGER NOT NULL,
    actor     TEXT    NOT NULL,
    action    TEXT    NOT NULL,
    subject   TEXT    NOT NULL,
    payload   TEXT    NOT NULL,
    prev_hash BLOB    NOT NULL,
    hash      BLOB    NOT NULL,
    -- The backstop of chain-seq-stale-read: a sequence number can never repeat.
    PRIMARY KEY (tenant, seq)
);

CREATE TABLE audit_heads (
    tenant TEXT    NOT NULL PRIMARY KEY,
    seq    INTEGER NOT NULL CHECK (seq >= 0),
    hash   BLOB    NOT NULL
);

CREATE TRIGGER audit_entries_no_update
    BEFORE UPDATE ON audit_entries
BEGIN
    SELECT RAISE(ABORT, 'audit_entries is append-only: UPDATE is not allowed');
END;

CREATE TRIGGER audit_entries_no_delete
    BEFORE DELETE ON audit_entries
BEGIN
    SELECT RAISE(ABORT, 'audit_entries is append-only: DELETE is not allowed');
END;
