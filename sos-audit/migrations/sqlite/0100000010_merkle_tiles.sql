-- sos-audit: the Merkle tree of each tenant's chain, stored as C2SP tlog-tiles, and the
-- checkpoints signed over it. The tree is derived from audit_entries by the checkpointer
-- (`MerkleStore::extend_tree`); the signing key is never stored here.
CREATE TABLE audit_tree_heads (
    tenant          TEXT    NOT NULL PRIMARY KEY,
    size            INTEGER NOT NULL CHECK (typeof(size) = 'integer' AND size >= 0),
    last_entry_hash BLOB    NOT NULL CHECK (typeof(last_entry_hash) = 'blob' AND length(last_entry_hash) = 32)
) STRICT;

CREATE TABLE audit_tree_tiles (
    tenant TEXT    NOT NULL,
    level  INTEGER NOT NULL CHECK (level BETWEEN 0 AND 7),
    idx    INTEGER NOT NULL CHECK (idx >= 0),
    hashes BLOB    NOT NULL CHECK (length(hashes) BETWEEN 32 AND 8192 AND length(hashes) % 32 = 0),
    PRIMARY KEY (tenant, level, idx)
) STRICT, WITHOUT ROWID;

CREATE TABLE audit_checkpoints (
    tenant    TEXT    NOT NULL,
    size      INTEGER NOT NULL CHECK (size >= 0),
    root      BLOB    NOT NULL CHECK (length(root) = 32),
    note      TEXT    NOT NULL,
    signed_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, size)
) STRICT;

CREATE TABLE audit_anchors (
    tenant          TEXT    NOT NULL,
    size            INTEGER NOT NULL CHECK (size >= 0),
    root            BLOB    NOT NULL CHECK (length(root) = 32),
    note            TEXT    NOT NULL,
    timestamp_token BLOB,
    anchored_us     INTEGER NOT NULL,
    PRIMARY KEY (tenant, size)
) STRICT;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is write-once: UPDATE is not allowed');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is write-once: DELETE is not allowed');
END;
CREATE TRIGGER audit_anchors_no_update BEFORE UPDATE ON audit_anchors
BEGIN
    SELECT RAISE(ABORT, 'audit_anchors is write-once: UPDATE is not allowed');
END;
CREATE TRIGGER audit_anchors_no_delete BEFORE DELETE ON audit_anchors
BEGIN
    SELECT RAISE(ABORT, 'audit_anchors is write-once: DELETE is not allowed');
END;
