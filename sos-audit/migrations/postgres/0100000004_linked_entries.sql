-- sos-audit: the database checks every entry's link (named shape `chain-seq-stale-read`).
--
-- The store writes an entry and moves its tenant's head in one statement, on the head it names.
-- The application role may also INSERT directly; this trigger refuses any entry that does not
-- extend the chain: its prev_hash must be the hash of entry seq - 1 (zero bytes for seq 1), and
-- the head row must have moved onto it in the same statement. A forked, repeated or skipped
-- sequence number, a wrong prev_hash, or an entry the head does not point at is refused at the
-- door instead of being found by the verifier later (or blocking the next append).
CREATE FUNCTION audit_entries_require_link() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq = 1 THEN
        IF NEW.prev_hash <> decode(repeat('00', 32), 'hex') THEN
            RAISE EXCEPTION 'audit entry %/1 is not linked: the first entry''s prev_hash must be zero bytes', NEW.tenant
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    ELSIF NOT EXISTS (
        SELECT 1 FROM audit_entries
        WHERE tenant = NEW.tenant AND seq = NEW.seq - 1 AND hash = NEW.prev_hash
    ) THEN
        RAISE EXCEPTION 'audit entry %/% is not linked: prev_hash is not the hash of entry %', NEW.tenant, NEW.seq, NEW.seq - 1
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM audit_heads WHERE tenant = NEW.tenant AND seq = NEW.seq AND hash = NEW.hash
    ) THEN
        RAISE EXCEPTION 'audit entry %/% is not linked: the head row did not move onto it in the same statement', NEW.tenant, NEW.seq
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER audit_entries_linked
    AFTER INSERT ON audit_entries
    FOR EACH ROW EXECUTE FUNCTION audit_entries_require_link();
