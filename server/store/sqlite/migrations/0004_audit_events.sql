-- The audit trail of admin actions: append-only (no UPDATE; rows leave only when the
-- housekeeping prunes those older than the retention). Never a key or an identifier: keys
-- appear as fingerprints, erased identifiers as keyed hashes.
CREATE TABLE audit_events (
    audit_id        INTEGER PRIMARY KEY,
    occurred_at     REAL NOT NULL,
    action          TEXT NOT NULL,
    -- '' when the action spans every workspace.
    workspace_id    TEXT NOT NULL,
    -- The caller: its token's name and roles, and the mTLS client identity when there is one.
    actor           TEXT NOT NULL,
    roles           TEXT NOT NULL,
    client_identity TEXT NOT NULL,
    -- What changed, as JSON.
    details         TEXT NOT NULL,
    -- "OK", or the error's stable reason.
    outcome         TEXT NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (occurred_at);
CREATE INDEX audit_events_workspace ON audit_events (workspace_id, audit_id);
CREATE TRIGGER audit_events_append_only BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;
