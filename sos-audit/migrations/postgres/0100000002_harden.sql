-- sos-audit: refuse malformed rows at the door, and keep head rows from being removed.
ALTER TABLE audit_entries
    ADD CONSTRAINT audit_entries_tenant_format CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    ADD CONSTRAINT audit_entries_hash_length CHECK (octet_length(hash) = 32 AND octet_length(prev_hash) = 32);

ALTER TABLE audit_heads
    ADD CONSTRAINT audit_heads_tenant_format CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    ADD CONSTRAINT audit_heads_hash_length CHECK (octet_length(hash) = 32);

-- A removed head row would make the next append restart at seq 1, and would hide a truncation
-- from the verifier's head check. Heads only move forward (UPDATE), they are never removed.
CREATE FUNCTION audit_heads_reject_removal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_heads rows are never removed: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_heads_no_delete
    BEFORE DELETE ON audit_heads
    FOR EACH ROW EXECUTE FUNCTION audit_heads_reject_removal();

CREATE TRIGGER audit_heads_no_truncate
    BEFORE TRUNCATE ON audit_heads
    FOR EACH STATEMENT EXECUTE FUNCTION audit_heads_reject_removal();
