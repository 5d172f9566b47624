-- A counter bumped whenever an integration is created, changed or removed. Intake worker
-- processes cache the integrations' settings and re-read them when it moves, inside the
-- same transaction that decides whether a click has an integration.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta VALUES ('integrations_version', 0);
