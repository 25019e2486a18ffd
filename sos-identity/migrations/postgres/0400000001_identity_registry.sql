-- sos-identity: per-tenant hash-chained registry of agent identities.
CREATE TABLE IF NOT EXISTS sos_identity_heads (
    tenant TEXT NOT NULL PRIMARY KEY,
    seq BIGINT NOT NULL CHECK (seq >= 0),
    head BYTEA NOT NULL CHECK (octet_length(head) = 32)
);

CREATE TABLE IF NOT EXISTS sos_identity_entries (
    tenant TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 1),
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    vector BYTEA NOT NULL CHECK (octet_length(vector) = 32),
    registered_at_us BIGINT NOT NULL,
    prev_hash BYTEA NOT NULL CHECK (octet_length(prev_hash) = 32),
    entry_hash BYTEA NOT NULL CHECK (octet_length(entry_hash) = 32),
    PRIMARY KEY (tenant, seq),
    CONSTRAINT sos_identity_entries_tenant_name UNIQUE (tenant, name)
);
