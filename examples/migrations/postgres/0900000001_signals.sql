-- Signals received by the reference server. Every row carries its tenant, and no column of the
-- primary key is nullable (named shape `unique-null`).
CREATE TABLE sos_server_signals (
    tenant       TEXT        NOT NULL,
    id           UUID        NOT NULL,
    received_seq BIGINT      GENERATED ALWAYS AS IDENTITY,
    kind         TEXT        NOT NULL,
    observed_at  TIMESTAMPTZ NOT NULL,
    body         JSONB       NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX sos_server_signals_by_tenant ON sos_server_signals (tenant, received_seq);
