-- The generation API's server secret (job tokens, signed result links) when X402_RS_GENERATION_SECRET is
-- not set: generated once by whichever replica starts first, so every replica signs alike.
CREATE TABLE generation_api_secret (
    id          INT         PRIMARY KEY CHECK (id = 1),
    value       BYTEA       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
