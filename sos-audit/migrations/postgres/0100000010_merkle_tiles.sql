-- sos-audit: the Merkle tree of each tenant's chain, stored as C2SP tlog-tiles, and the
-- checkpoints signed over it. The tree is derived from audit_entries by the checkpointer
-- (`MerkleStore::extend_tree`); the signing key is never stored here.
CREATE TABLE audit_tree_heads (
    tenant          TEXT   NOT NULL PRIMARY KEY CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    -- How many entries (leaves) the stored tiles cover.
    size            BIGINT NOT NULL CHECK (size >= 0),
    -- The hash of entry `size` (zero bytes for an empty tree), which the next entry must link to.
    last_entry_hash BYTEA  NOT NULL CHECK (octet_length(last_entry_hash) = 32)
);

CREATE TABLE audit_tree_tiles (
    tenant TEXT     NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    -- Tile level L holds hashes of tree level 8·L.
    level  SMALLINT NOT NULL CHECK (level BETWEEN 0 AND 7),
    idx    BIGINT   NOT NULL CHECK (idx >= 0),
    -- 1 to 256 concatenated 32-byte hashes: the tile's C2SP bytes.
    hashes BYTEA    NOT NULL CHECK (octet_length(hashes) BETWEEN 32 AND 8192 AND octet_length(hashes) % 32 = 0),
    CONSTRAINT audit_tree_tiles_key PRIMARY KEY (tenant, level, idx)
);

CREATE TABLE audit_checkpoints (
    tenant    TEXT   NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    size      BIGINT NOT NULL CHECK (size >= 0),
    root      BYTEA  NOT NULL CHECK (octet_length(root) = 32),
    -- The signed note exactly as published.
    note      TEXT   NOT NULL,
    signed_us BIGINT NOT NULL,
    -- One checkpoint per size: a second root for a size is a split view.
    CONSTRAINT audit_checkpoints_key PRIMARY KEY (tenant, size)
);

-- The database-table anchor sink (`PgAnchorSink`): write-once copies of published checkpoints.
CREATE TABLE audit_anchors (
    tenant          TEXT   NOT NULL CHECK (tenant ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    size            BIGINT NOT NULL CHECK (size >= 0),
    root            BYTEA  NOT NULL CHECK (octet_length(root) = 32),
    note            TEXT   NOT NULL,
    -- An RFC 3161 TimeStampResp token over the note, when a timestamp authority was used.
    timestamp_token BYTEA,
    anchored_us     BIGINT NOT NULL,
    CONSTRAINT audit_anchors_key PRIMARY KEY (tenant, size)
);

CREATE FUNCTION audit_write_once_reject() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is write-once: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_checkpoints_write_once
    BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_write_once_reject();

CREATE TRIGGER audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write_once_reject();

CREATE TRIGGER audit_anchors_write_once
    BEFORE UPDATE OR DELETE ON audit_anchors
    FOR EACH ROW EXECUTE FUNCTION audit_write_once_reject();

CREATE TRIGGER audit_anchors_no_truncate
    BEFORE TRUNCATE ON audit_anchors
    FOR EACH STATEMENT EXECUTE FUNCTION audit_write_once_reject();
