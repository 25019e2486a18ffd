-- sos-audit: the database checks every entry's link (named shape `chain-seq-stale-read`).
--
-- The store moves its tenant's head row onto a new entry and then inserts the entry, in one
-- transaction, only while the head was the entry's predecessor. The application may also INSERT
-- directly; this trigger refuses any entry that does not extend the chain: its prev_hash must be
-- the hash of entry seq - 1 (zero bytes for seq 1), and the head row must already point at it. A
-- forked, repeated or skipped sequence number, a wrong prev_hash, or an entry the head does not
-- point at is refused at the door. (An AFTER trigger, so that the malformed-row triggers of
-- 0100000002 speak first.)
CREATE TRIGGER audit_entries_linked
    AFTER INSERT ON audit_entries
    WHEN NOT (
        (NEW.seq = 1 AND NEW.prev_hash = zeroblob(32)
            OR EXISTS (SELECT 1 FROM audit_entries
                       WHERE tenant = NEW.tenant AND seq = NEW.seq - 1 AND hash = NEW.prev_hash))
        AND EXISTS (SELECT 1 FROM audit_heads
                    WHERE tenant = NEW.tenant AND seq = NEW.seq AND hash = NEW.hash)
    )
BEGIN
    SELECT RAISE(ABORT, 'audit entry is not linked: prev_hash must be the hash of entry seq - 1, and the head row must point at the entry');
END;
