-- Integrations: only Vault transit ciphertext of the key, never the key.
CREATE TABLE integrations (
    workspace_id     TEXT PRIMARY KEY,
    ciphertext       TEXT NOT NULL,
    key_fingerprint  TEXT NOT NULL,
    key_version      INTEGER NOT NULL,
    settings         TEXT NOT NULL,
    state            TEXT NOT NULL,
    state_reason     TEXT NOT NULL DEFAULT '',
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    delivered_count  INTEGER NOT NULL DEFAULT 0,
    anonymous_count  INTEGER NOT NULL DEFAULT 0,
    last_delivery_at REAL,
    last_error       TEXT NOT NULL DEFAULT '',
    last_error_at    REAL
);

-- The outbox: status 0 = queued (or held while the key is rejected), 1 = failed.
-- Delivered events are deleted; the click index and conversions table keep dedupe.
CREATE TABLE outbox (
    event_id        INTEGER PRIMARY KEY,
    workspace_id    TEXT NOT NULL,
    kind            TEXT NOT NULL,
    source_id       TEXT NOT NULL,
    occurred_at     REAL NOT NULL,
    created_at      REAL NOT NULL,
    -- The profile: Klaviyo identifiers, '' when absent (columns, not JSON: intake writes
    -- tens of thousands of rows a second and encoding costs more than the insert).
    email           TEXT NOT NULL,
    phone_number    TEXT NOT NULL,
    external_id     TEXT NOT NULL,
    kx              TEXT NOT NULL,
    -- clicks: the serialized Click; conversions: their properties as JSON.
    payload         BLOB NOT NULL,
    value           REAL,
    currency        TEXT NOT NULL DEFAULT '',
    status          INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    failed_at       REAL
);
-- Serves "due events of a workspace, oldest first" straight from the index, no sort.
CREATE INDEX outbox_due ON outbox (workspace_id, status, next_attempt_at, event_id);

-- The click index: click id -> identifiers, for dedupe and conversion attribution.
CREATE TABLE clicks (
    workspace_id TEXT NOT NULL,
    click_id     TEXT NOT NULL,
    email        TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    external_id  TEXT NOT NULL,
    kx           TEXT NOT NULL,
    click_time   REAL NOT NULL,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (workspace_id, click_id)
) WITHOUT ROWID;
CREATE INDEX clicks_expiry ON clicks (expires_at);

CREATE TABLE conversions (
    workspace_id  TEXT NOT NULL,
    conversion_id TEXT NOT NULL,
    expires_at    REAL NOT NULL,
    PRIMARY KEY (workspace_id, conversion_id)
) WITHOUT ROWID;
CREATE INDEX conversions_expiry ON conversions (expires_at);

-- One delivery worker per workspace at a time, across replicas.
CREATE TABLE leases (
    workspace_id TEXT PRIMARY KEY,
    owner        TEXT NOT NULL,
    expires_at   REAL NOT NULL
);
