-- sos-audit: per-tenant hash chains. Entries are write-once; the head row is the per-tenant lock.
CREATE TABLE audit_entries (
    tenant    TEXT   NOT NULL,
    seq       BIGINT NOT NULL CHECK (seq >= 1),
    time_us   BIGINT NOT NULL,
    actor     TEXT   NOT NULL,
    action    TEXT   NOT NULL,
    subject   TEXT   NOT NULL,
    payload   TEXT   NOT NULL,
    prev_hash BYTEA  NOT NULL,
    hash      BYTEA  NOT NULL,
    -- The backstop of chain-seq-stale-read: a sequence number can never repeat.
    CONSTRAINT audit_entries_tenant_seq_key PRIMARY KEY (tenant, seq)
);

CREATE TABLE audit_heads (
    tenant TEXT   NOT NULL PRIMARY KEY,
    seq    BIGINT NOT NULL CHECK (seq >= 0),
    hash   BYTEA  NOT NULL
);

CREATE FUNCTION audit_entries_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_entries is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_entries_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_reject_change();

CREATE TRIGGER audit_entries_no_truncate
    BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_reject_change();
