-- sos-identity: per-tenant hash-chained registry of agent identities.
CREATE TABLE IF NOT EXISTS sos_identity_heads (
    tenant TEXT NOT NULL PRIMARY KEY,
    seq INTEGER NOT NULL CHECK (seq >= 0),
    head BLOB NOT NULL CHECK (length(head) = 32)
);

CREATE TABLE IF NOT EXISTS sos_identity_entries (
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
);
