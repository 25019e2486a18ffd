-- sos-audit: audit_entries becomes a WITHOUT ROWID table clustered on its primary key
-- (tenant, seq). As a rowid table every entry was written twice, into the table's B-tree and into
-- the separate index of its primary key, so a commit wrote one WAL page more than it needed. The
-- columns, the CHECK, the primary key (the backstop of chain-seq-stale-read) and every trigger
-- are the same as before; existing entries are copied unchanged.
--
-- SQLite cannot change a table to WITHOUT ROWID in place, so this follows its documented
-- procedure (https://www.sqlite.org/lang_altertable.html#otheralter): create the new table, copy
-- the rows, drop the old table, rename the new one, create the triggers again. The migration runs
-- in one transaction, so a reader sees either the old table or the new one, never neither. The
-- old table's triggers would go with it; they are dropped first to say so, and created again on
-- the new table at the end. The copy fires no trigger (the new table has none yet) and DROP TABLE
-- fires no DELETE trigger. While the old table is gone, a host's own view over audit_entries
-- would make a checked rename fail ("no such table"), so the rename runs with legacy_alter_table
-- on (it renames without checking other objects; the view reads the new table by its name
-- afterwards), and the pragma is set back to its default at the end.
--
-- Dropping the old table would also drop, silently, whatever a host put on it (its own indexes
-- and triggers), and a host table whose foreign key references an entry would make the drop
-- fail. So the migration first refuses, before anything changes, when such objects exist: the
-- CHECK below fails with its constraint's name as the message, and the host drops its objects,
-- runs the migrations and creates them again (docs/audit-format.md, "Upgrading SQLite").
CREATE TEMP TABLE audit_upgrade_host_objects (
    found INTEGER NOT NULL
        CONSTRAINT "audit_entries carries indexes, triggers or incoming foreign keys that are not sos-audit's own; drop them, run the migrations, then create them again (see docs/audit-format.md, Upgrading SQLite)"
        CHECK (found = 0)
);
INSERT INTO audit_upgrade_host_objects
    SELECT (SELECT count(*) FROM sqlite_master
            -- A table name is matched as SQLite resolves it: without regard to ASCII case (a
            -- trigger or a foreign key keeps the name as its statement spelled it).
            WHERE tbl_name = 'audit_entries' COLLATE NOCASE
              -- The primary key's own index is the only one with no SQL; a host's has its CREATE.
              AND (type = 'index' AND sql IS NOT NULL
                   OR type = 'trigger'
                      AND name NOT IN ('audit_entries_no_update', 'audit_entries_no_delete',
                                       'audit_entries_well_formed', 'audit_entries_no_replace',
                                       'audit_entries_linked')))
         + (SELECT count(*) FROM sqlite_master AS host, pragma_foreign_key_list(host.name) AS fk
            WHERE host.type = 'table' AND fk."table" = 'audit_entries' COLLATE NOCASE);
DROP TABLE audit_upgrade_host_objects;

PRAGMA legacy_alter_table = ON;

DROP TRIGGER audit_entries_no_update;
DROP TRIGGER audit_entries_no_delete;
DROP TRIGGER audit_entries_well_formed;
DROP TRIGGER audit_entries_no_replace;
DROP TRIGGER audit_entries_linked;

CREATE TABLE audit_entries_clustered (
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
) WITHOUT ROWID;

INSERT INTO audit_entries_clustered (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
    SELECT tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash
    FROM audit_entries ORDER BY tenant, seq;

DROP TABLE audit_entries;
ALTER TABLE audit_entries_clustered RENAME TO audit_entries;
PRAGMA legacy_alter_table = OFF;

-- The triggers of 0100000001 to 0100000004, unchanged.
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

CREATE TRIGGER audit_entries_well_formed
    BEFORE INSERT ON audit_entries
    WHEN typeof(NEW.tenant) <> 'text'
      OR length(NEW.tenant) NOT BETWEEN 1 AND 64
      OR NEW.tenant GLOB '*[^a-z0-9_-]*'
      OR substr(NEW.tenant, 1, 1) IN ('-', '_')
      OR typeof(NEW.seq) <> 'integer'
      OR typeof(NEW.time_us) <> 'integer'
      OR typeof(NEW.actor) <> 'text'
      OR typeof(NEW.action) <> 'text'
      OR typeof(NEW.subject) <> 'text'
      OR typeof(NEW.payload) <> 'text'
      OR typeof(NEW.prev_hash) <> 'blob' OR length(NEW.prev_hash) <> 32
      OR typeof(NEW.hash) <> 'blob' OR length(NEW.hash) <> 32
BEGIN
    SELECT RAISE(ABORT, 'audit_entries row is malformed: wrong type, tenant id or hash length');
END;

-- `INSERT OR REPLACE` deletes the conflicting row without firing DELETE triggers (unless
-- recursive_triggers is on), in a WITHOUT ROWID table as in a rowid table.
CREATE TRIGGER audit_entries_no_replace
    BEFORE INSERT ON audit_entries
    WHEN EXISTS (SELECT 1 FROM audit_entries WHERE tenant = NEW.tenant AND seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_entries is append-only: an existing entry cannot be replaced');
END;

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
