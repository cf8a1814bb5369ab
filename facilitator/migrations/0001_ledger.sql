-- The settlement ledger. A row exists before any transaction is sent; every change after is recorded.
CREATE TABLE settlements (
    id              BIGSERIAL PRIMARY KEY,
    chain_id        BIGINT      NOT NULL,
    token           TEXT        NOT NULL,            -- checksummed token address
    payer           TEXT        NOT NULL,            -- checksummed authorizer
    auth_nonce      TEXT        NOT NULL,            -- EIP-3009 nonce, 0x + 64 hex
    pay_to          TEXT        NOT NULL,
    amount          NUMERIC(78) NOT NULL,
    valid_after     NUMERIC(78) NOT NULL,
    valid_before    NUMERIC(78) NOT NULL,
    network         TEXT        NOT NULL,            -- the client's network id, echoed in answers
    x402_version    INT         NOT NULL,
    payload_hash    TEXT        NOT NULL,            -- binds a repeat to the very same signed payload
    payload         JSONB       NOT NULL,
    requirements    JSONB       NOT NULL,
    calldata        BYTEA       NOT NULL,
    status          TEXT        NOT NULL,            -- received | submitted | confirmed | failed
    error_reason    TEXT,
    error_message   TEXT,
    tx_hash         TEXT,                            -- the transaction currently expected to land
    block_number    BIGINT,
    block_hash      TEXT,
    gas_used        BIGINT,
    attempts        INT         NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    submitted_at    TIMESTAMPTZ,
    finalized_at    TIMESTAMPTZ,
    CONSTRAINT settlements_authorization_key UNIQUE (chain_id, token, payer, auth_nonce),
    CONSTRAINT settlements_status CHECK (status IN ('received', 'submitted', 'confirmed', 'failed'))
);
CREATE INDEX settlements_in_flight ON settlements (lease_until) WHERE status IN ('received', 'submitted');

-- Every transaction broadcast for a settlement (a dropped one is re-sent under a new signer nonce).
CREATE TABLE settlement_transactions (
    tx_hash         TEXT PRIMARY KEY,
    settlement_id   BIGINT      NOT NULL REFERENCES settlements (id),
    chain_id        BIGINT      NOT NULL,
    signer          TEXT        NOT NULL,
    signer_nonce    BIGINT      NOT NULL,
    raw_tx          BYTEA       NOT NULL,
    max_fee_per_gas NUMERIC(78) NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT settlement_transactions_signer_nonce UNIQUE (chain_id, signer, signer_nonce)
);
CREATE INDEX settlement_transactions_settlement ON settlement_transactions (settlement_id);

-- Next nonce per signer, shared by every replica: allocation and the signed transaction commit together.
CREATE TABLE signer_nonces (
    chain_id    BIGINT NOT NULL,
    address     TEXT   NOT NULL,
    next_nonce  BIGINT NOT NULL,
    PRIMARY KEY (chain_id, address)
);

-- Audit trail of state changes.
CREATE TABLE settlement_events (
    id             BIGSERIAL PRIMARY KEY,
    settlement_id  BIGINT      NOT NULL REFERENCES settlements (id),
    from_status    TEXT,
    to_status      TEXT        NOT NULL,
    detail         JSONB       NOT NULL DEFAULT '{}'::jsonb,
    at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settlement_events_settlement ON settlement_events (settlement_id);
