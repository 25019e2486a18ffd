-- sos-ruliads: trigger ceiling and persisted evaluator state. Every row carries its tenant; every
-- key column of a uniqueness guarantee is NOT NULL (named shape `unique-null`).

-- How many triggers run now, per (tenant, scope); scope '*' is the global ceiling, any other
-- value an attribute. The CHECK keeps a double release from going negative (`negative-balance`).
CREATE TABLE sos_ruliads_ceiling_slots (
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    running INTEGER NOT NULL DEFAULT 0 CHECK (running >= 0),
    PRIMARY KEY (tenant, scope)
);

-- Every admitted trigger; the primary key refuses a second start of the same cause (`replay-same`).
CREATE TABLE sos_ruliads_triggers (
    tenant TEXT NOT NULL,
    cause TEXT NOT NULL,
    attribute TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished')),
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (tenant, cause)
);

-- Refused attempts, kept so nothing disappears without a trace. The id is a random UUID as text, not a sequence.
CREATE TABLE sos_ruliads_trigger_refusals (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    cause TEXT NOT NULL,
    attribute TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('ceiling', 'replay')),
    refused_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sos_ruliads_trigger_refusals_tenant ON sos_ruliads_trigger_refusals (tenant, refused_at);

-- Causes an evaluator has claimed: the first claim wins, every later one sees it was seen.
CREATE TABLE sos_ruliads_seen_causes (
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    cause TEXT NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, scope, cause)
);
CREATE INDEX sos_ruliads_seen_causes_age ON sos_ruliads_seen_causes (tenant, seen_at);

-- Serialized state blobs (trust gate, grouper, combinator state), one per (tenant, key).
CREATE TABLE sos_ruliads_state (
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    value JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, key)
);
