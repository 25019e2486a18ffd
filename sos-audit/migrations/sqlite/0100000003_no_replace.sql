-- sos-audit: `INSERT OR REPLACE` deletes the conflicting row without firing DELETE triggers
-- (unless recursive_triggers is on), so an insert that would replace an entry is refused here.
CREATE TRIGGER audit_entries_no_replace
    BEFORE INSERT ON audit_entries
    WHEN EXISTS (SELECT 1 FROM audit_entries WHERE tenant = NEW.tenant AND seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_entries is append-only: an existing entry cannot be replaced');
END;
