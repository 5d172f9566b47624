-- Delivery leases are named (an account, or "housekeeping"), carry a fencing token that
-- grows whenever the lease changes hands, and expire on the database's clock. Leases in
-- flight are dropped: a lease is at most a TTL of delivery, re-taken at once.
DROP TABLE leases;
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    token      INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    -- The holder's usage record (its Klaviyo requests of the last minute), and when it was
    -- written: the next holder's rate limiter starts from it.
    usage      TEXT NOT NULL DEFAULT '',
    usage_at   REAL
) WITHOUT ROWID;

-- The Klaviyo account a key speaks for (a digest of the key, never the key): workspaces of
-- one account share a lease and a rate limiter. '' until the key is next registered or
-- decrypted for delivery.
ALTER TABLE integrations ADD COLUMN account TEXT NOT NULL DEFAULT '';
CREATE INDEX integrations_account ON integrations (account);

-- Intake now reads a batch's integrations inside its own transaction, which is exact across
-- processes; the settings version counter is no longer needed.
DROP TABLE meta;
