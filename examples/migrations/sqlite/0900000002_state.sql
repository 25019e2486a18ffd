-- The reference server's own state: tenants, the CRM records the catalog ruliads look at, agents
-- and the signals they raised. Every row carries its tenant, no column of a primary key is
-- nullable (named shape `unique-null`), and records are JSON bodies guarded by a version for
-- compare-and-swap updates. The foundation's signal table is replaced.
DROP TABLE sos_server_signals;

CREATE TABLE sos_server_tenants (
    tenant     TEXT    NOT NULL PRIMARY KEY,
    created_us INTEGER NOT NULL
) STRICT;

CREATE TABLE sos_server_records (
    tenant     TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('deal', 'contact', 'message')),
    id         TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    version    INTEGER NOT NULL CHECK (version >= 1),
    at_us      INTEGER NOT NULL,
    PRIMARY KEY (tenant, kind, id)
) STRICT;
CREATE INDEX sos_server_records_by_time ON sos_server_records (tenant, kind, at_us);

CREATE TABLE sos_server_agents (
    tenant     TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    vertical   TEXT    NOT NULL,
    trust      TEXT    NOT NULL,
    version    INTEGER NOT NULL CHECK (version >= 1),
    created_us INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
) STRICT;

CREATE TABLE sos_server_signals (
    tenant      TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    agent       TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    class       TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('withheld', 'released', 'delivering', 'delivered', 'failed', 'rejected')),
    detail      TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    feedback    TEXT,
    lease_us    INTEGER NOT NULL,
    created_us  INTEGER NOT NULL,
    updated_us  INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
) STRICT;
CREATE INDEX sos_server_signals_by_time ON sos_server_signals (tenant, created_us);

CREATE TABLE sos_server_receipts (
    tenant     TEXT    NOT NULL,
    signal_id  TEXT    NOT NULL,
    attempt    INTEGER NOT NULL CHECK (attempt >= 1),
    channel    TEXT    NOT NULL,
    receipt    TEXT    NOT NULL,
    at_us      INTEGER NOT NULL,
    PRIMARY KEY (tenant, signal_id, attempt)
) STRICT;
