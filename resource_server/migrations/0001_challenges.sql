-- Resource server tables (prefixed rs_: the database may be shared with a facilitator).

-- One row per 402 (or /quote): what was asked for, and where its payment stands.
CREATE TABLE rs_challenges (
    id               TEXT PRIMARY KEY,                 -- 128 random bits, hex
    route            TEXT        NOT NULL,             -- "METHOD /pattern" from the pricing file
    resource         TEXT        NOT NULL,             -- the URL the challenge was issued for
    params           JSONB       NOT NULL,             -- canonical validated parameters
    params_hash      TEXT        NOT NULL,             -- sha256 of their canonical JSON
    price            JSONB       NOT NULL,             -- the quote's breakdown
    requirements     JSONB       NOT NULL,             -- x402 v2 PaymentRequirements as sent
    requirements_v1  JSONB       NOT NULL,             -- x402 v1 PaymentRequirements as sent
    status           TEXT        NOT NULL DEFAULT 'issued',
    issued_at        TIMESTAMPTZ NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    x402_version     INT,
    payer            TEXT,
    tx_hash          TEXT,
    error_reason     TEXT,
    settle_attempts  INT         NOT NULL DEFAULT 0,
    lease_owner      TEXT,                             -- reconciler lease on settlement_pending rows
    lease_until      TIMESTAMPTZ,
    CONSTRAINT rs_challenges_status CHECK (status IN
        ('issued', 'verified', 'settled', 'settlement_pending', 'failed', 'released', 'expired'))
);
-- v1 matching: newest unpaid challenges of a route + parameters.
CREATE INDEX rs_challenges_route_params ON rs_challenges (route, params_hash, issued_at DESC)
    WHERE status IN ('issued', 'expired');
CREATE INDEX rs_challenges_pending ON rs_challenges (lease_until) WHERE status = 'settlement_pending';
CREATE INDEX rs_challenges_expiry ON rs_challenges (expires_at) WHERE status = 'issued';

-- One row per EIP-3009 authorization ever accepted: the key makes a payment unlock one request only,
-- across every replica sharing the database.
CREATE TABLE rs_payments (
    chain_id      BIGINT      NOT NULL,
    asset         TEXT        NOT NULL,                -- checksummed token address
    payer         TEXT        NOT NULL,                -- checksummed authorizer
    auth_nonce    TEXT        NOT NULL,                -- 0x + 64 lower-case hex
    challenge_id  TEXT        NOT NULL REFERENCES rs_challenges (id),
    x402_version  INT         NOT NULL,
    payload       JSONB       NOT NULL,                -- the payment payload as sent (re-settled from here)
    requirements  JSONB       NOT NULL,                -- the requirements it was verified against
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT rs_payments_authorization_key PRIMARY KEY (chain_id, asset, payer, auth_nonce)
);
CREATE UNIQUE INDEX rs_payments_challenge ON rs_payments (challenge_id);

-- Audit trail: every payment attempt, refusal, facilitator answer and state change.
CREATE TABLE rs_audit (
    id            BIGSERIAL PRIMARY KEY,
    challenge_id  TEXT,
    event         TEXT        NOT NULL,
    from_status   TEXT,
    to_status     TEXT,
    payer         TEXT,                                -- lower case, for lookups
    tx_hash       TEXT,                                -- lower case, for lookups
    detail        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX rs_audit_challenge ON rs_audit (challenge_id, id);
CREATE INDEX rs_audit_payer ON rs_audit (payer, id) WHERE payer IS NOT NULL;
CREATE INDEX rs_audit_tx ON rs_audit (tx_hash, id) WHERE tx_hash IS NOT NULL;
-- Early replay answers look an authorization up by payer and nonce alone (random 32 bytes per payer).
CREATE INDEX rs_payments_payer_nonce ON rs_payments (payer, auth_nonce);
