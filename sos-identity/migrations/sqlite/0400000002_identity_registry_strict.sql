-- sos-identity: STRICT tables. SQLite's flexible typing let a raw insert store a key column as a
-- BLOB (or a sequence number as a REAL); a BLOB never equals the TEXT of the same bytes, so
-- UNIQUE (tenant, name) let a second "alice" in (named shape `unique-affinity`). STRICT refuses
-- values of the wrong type, as PostgreSQL does.
CREATE TABLE sos_identity_heads_strict (
    tenant TEXT NOT NULL PRIMARY KEY,
    seq INTEGER NOT NULL CHECK (seq >= 0),
    head BLOB NOT NULL CHECK (length(head) = 32)
) STRICT;
INSERT INTO sos_identity_heads_strict (tenant, seq, head) SELECT tenant, seq, head FROM sos_identity_heads;
DROP TABLE sos_identity_heads;
ALTER TABLE sos_identity_heads_strict RENAME TO sos_identity_heads;

CREATE TABLE sos_identity_entries_strict (
    tenant TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 1),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    vector BLOB NOT NULL CHECK (length(vector) = 32),
    registered_at_us INTEGER NOT NULL,
    prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32),
    entry_hash BLOB NOT NULL CHECK (length(entry_hash) = 32),
    PRIMARY KEY (tenant, seq),
    UNIQUE (tenant, name)
) STRICT;
INSERT INTO sos_identity_entries_strict
    (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash)
    SELECT tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash FROM sos_identity_entries;
DROP TABLE sos_identity_entries;
ALTER TABLE sos_identity_entries_strict RENAME TO sos_identity_entries;
