# Least-privilege policy for the Elido -> Klaviyo forwarder (policy name: elido-forwarder).
#
# Written for the defaults: transit mounted at `transit/`, workspace keys named
# `elido-ws-<workspace_id>`. If you change FORWARDER_VAULT_KEY_PREFIX or VAULT_TRANSIT_MOUNT,
# change the paths below to match. See docs/vault.md for what each rule is for.

# Encrypt a workspace's Klaviyo key. `create` lets the first encryption create the workspace's
# transit key (transit upserts on encrypt); the parameter list pins the key type, so this token
# cannot create derived or convergent keys.
path "transit/encrypt/elido-ws-*" {
  capabilities = ["create", "update"]
  allowed_parameters = {
    "plaintext" = []
    "type"      = ["aes256-gcm96"]
  }
}

# Decrypt before delivering to Klaviyo.
path "transit/decrypt/elido-ws-*" {
  capabilities = ["update"]
}

# Re-encrypt stored ciphertexts under the newest key version after an operator rotates a key.
path "transit/rewrap/elido-ws-*" {
  capabilities = ["update"]
}

# read:   key metadata (latest version); never key material, which lives behind
#         transit/export/ and transit/backup/, both denied by omission.
# delete: crypto-shred a workspace's key when its integration is removed.
# update: only to set deletion_allowed=true on keys/<name>/config just before the delete.
#         The `*` glob also covers keys/<name>/rotate and keys/<name>/trim; the parameter
#         list leaves rotate (no parameters; harmless next to delete) and denies trim,
#         min_decryption_version, exportable and every other knob.
path "transit/keys/elido-ws-*" {
  capabilities = ["read", "update", "delete"]
  allowed_parameters = {
    "deletion_allowed" = [true]
  }
}

# Keep our own token alive; tokens minted for the forwarder carry no `default` policy.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}
