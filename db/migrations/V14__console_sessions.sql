-- Sessions of the operator console (`/console`). A bearer token is exchanged
-- once for a session; the browser keeps only a random session id in an
-- HttpOnly cookie, the table only its SHA-256. A session carries its token's
-- id (NULL for the environment's ADMIN_TOKEN), so every request re-checks the
-- token: revoking or expiring it ends its sessions at once, and deleting it
-- deletes them. A session of ADMIN_TOKEN keeps that token's SHA-256
-- (`admin_token_hash`), so it ends when ADMIN_TOKEN is changed or removed.
-- `csrf_token` is the value every form of the session carries.
CREATE TABLE console_sessions (
    id_hash     bytea PRIMARY KEY,
    token_id    bigint REFERENCES api_tokens (id) ON DELETE CASCADE,
    admin_token_hash bytea CHECK ((token_id IS NULL) = (admin_token_hash IS NOT NULL)),
    operator_id text NOT NULL,
    org_id      text,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'auditor', 'admin')),
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
CREATE INDEX console_sessions_token ON console_sessions (token_id) WHERE token_id IS NOT NULL;
