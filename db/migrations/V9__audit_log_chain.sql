-- The operation audit log proves itself. Every copy's writer keeps a chain of
-- its own: each entry carries its place (chain_id, chain_seq), the hash of the
-- entry before it (prev_hash) and its own hash (entry_hash = SHA-256 of
-- prev_hash followed by the entry's canonical form, README "Audit log
-- integrity"). A chain starts from a recorded genesis; its head is signed
-- every minute while entries arrive, and at stop, into audit_checkpoints.
-- `audit-alert audit verify` recomputes all of it.
CREATE TABLE audit_chains (
    chain_id    uuid PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    -- What the chain's first entry names as the hash before it.
    genesis     bytea NOT NULL,
    -- Where the chain starts now: 1, or after a retention purge the first
    -- entry it kept, with the hash that entry names before it, signed.
    first_seq   bigint NOT NULL DEFAULT 1,
    first_prev  bytea,
    cut_signature bytea
);

ALTER TABLE audit_log ADD COLUMN chain_id uuid;
ALTER TABLE audit_log ADD COLUMN chain_seq bigint;
ALTER TABLE audit_log ADD COLUMN prev_hash bytea;
ALTER TABLE audit_log ADD COLUMN entry_hash bytea;

CREATE TABLE audit_checkpoints (
    chain_id   uuid NOT NULL REFERENCES audit_chains,
    chain_seq  bigint NOT NULL,
    head_hash  bytea NOT NULL,
    signed_at  timestamptz NOT NULL,
    -- HMAC-SHA256 under a key derived from SECRET_KEY; NULL without a key.
    signature  bytea,
    PRIMARY KEY (chain_id, chain_seq)
);

-- Entries written before chaining began cannot be verified; how many there
-- were is recorded, so that one added later among them is still noticed.
CREATE TABLE audit_unchained (
    entries     bigint NOT NULL,
    last_time   timestamptz,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO audit_unchained (entries, last_time)
SELECT count(*), max(operation_time) FROM audit_log;

-- Like the log itself: append-only, but for the retention purge, which
-- records where each chain now starts and drops what it no longer needs.
CREATE FUNCTION audit_chain_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE')
       AND current_setting('audit_alert.retention_purge', true) = 'on' THEN
        RETURN CASE TG_OP WHEN 'UPDATE' THEN NEW ELSE OLD END;
    END IF;
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_chains_append_only BEFORE UPDATE OR DELETE ON audit_chains
    FOR EACH ROW EXECUTE FUNCTION audit_chain_append_only();
CREATE TRIGGER audit_chains_no_truncate BEFORE TRUNCATE ON audit_chains
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_chain_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_chain_append_only();
CREATE TRIGGER audit_unchained_append_only BEFORE UPDATE OR DELETE ON audit_unchained
    FOR EACH ROW EXECUTE FUNCTION audit_chain_append_only();
