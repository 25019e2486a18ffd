-- Signals received by the reference server. Every row carries its tenant, and no column of the
-- primary key is nullable (named shape `unique-null`). Rows are listed in rowid order, which is
-- the order they arrived in.
CREATE TABLE sos_server_signals (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    observed_at TEXT NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX sos_server_signals_by_tenant ON sos_server_signals (tenant);
