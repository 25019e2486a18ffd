-- sos-audit: an append as one statement. The store used to move the head row and insert the
-- entry with two statements, so an append needed a transaction of its own (BEGIN, the
-- statements, COMMIT: three round trips to sqlx's SQLite worker thread where one would do).
-- An INSERT into the view audit_appends does both in one statement, which SQLite runs
-- atomically also in autocommit mode: its trigger moves the tenant's head onto the entry only
-- while the head is the entry's predecessor (seq - 1 and prev_hash), refuses with "audit head
-- moved" when it is not, inserts the entry, and refuses unless exactly that row was written (a
-- host's own trigger on audit_entries that answers RAISE(IGNORE) cannot leave a moved head
-- without its entry). A refusal undoes the whole statement.
--
-- Nothing is trusted here that was not before: the statements in the trigger are the ones the
-- store ran itself, and any role that may insert into audit_entries and update audit_heads could
-- run them. The insert still passes every trigger of audit_entries (well-formed, no replace,
-- linked), so the view cannot put an entry into a chain that a direct INSERT could not.
CREATE VIEW audit_appends AS
    SELECT tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash
    FROM audit_entries WHERE 0;

CREATE TRIGGER audit_appends_insert
    INSTEAD OF INSERT ON audit_appends
BEGIN
    UPDATE audit_heads SET seq = NEW.seq, hash = NEW.hash
        WHERE tenant = NEW.tenant AND seq = NEW.seq - 1 AND hash = NEW.prev_hash;
    SELECT RAISE(ABORT, 'audit head moved: the entry does not extend the head row')
        WHERE changes() <> 1;
    INSERT INTO audit_entries (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
        VALUES (NEW.tenant, NEW.seq, NEW.time_us, NEW.actor, NEW.action, NEW.subject, NEW.payload,
                NEW.prev_hash, NEW.hash);
    SELECT RAISE(ABORT, 'audit entry was not written with its head move')
        WHERE changes() <> 1;
END;
