-- Generation jobs. A job is claimable while active and unleased (or its lease ran out) and run_after has
-- passed, so a crashed worker's job is picked up again by whoever polls next.
CREATE TABLE generation_jobs (
    id                       UUID PRIMARY KEY,
    tool                     TEXT             NOT NULL,
    params                   JSONB            NOT NULL,            -- validated inputs (prompt, duration...)
    payer                    TEXT,                                 -- counted by the per-payer limit
    idempotency_key          TEXT UNIQUE,                          -- a repeated submission returns the job
    status                   TEXT             NOT NULL,
    progress                 DOUBLE PRECISION NOT NULL DEFAULT 0,
    status_text              TEXT             NOT NULL DEFAULT '',
    current_step             INT              NOT NULL DEFAULT 0,  -- index of the first unfinished step
    runs                     INT              NOT NULL DEFAULT 1,  -- bumped by retry_job; fences final hooks
    run_after                TIMESTAMPTZ      NOT NULL DEFAULT now(),  -- backoff: not claimable before
    lease_owner              TEXT,
    lease_until              TIMESTAMPTZ,
    heartbeat_at             TIMESTAMPTZ,
    queued_at                TIMESTAMPTZ      NOT NULL DEFAULT now(),
    started_at               TIMESTAMPTZ,
    finished_at              TIMESTAMPTZ,
    updated_at               TIMESTAMPTZ      NOT NULL DEFAULT now(),
    result                   JSONB            NOT NULL DEFAULT '{}'::jsonb,  -- artifact references
    failure_category         TEXT,
    failure_code             TEXT,
    failure_message          TEXT,
    failed_step              TEXT,
    notices                  JSONB            NOT NULL DEFAULT '[]'::jsonb,  -- [{code, message}]
    price                    JSONB,                                -- the breakdown quoted at submission
    -- Payment: opaque to the engine, filled by the API layer.
    payment_challenge_id     TEXT,
    payment_tx_hash          TEXT,
    settlement_status        TEXT,
    -- Webhooks: the secret signs deliveries, so it is stored as given.
    webhook_url              TEXT,
    webhook_secret           TEXT,
    webhook_progress         BOOLEAN          NOT NULL DEFAULT false,
    last_progress_webhook_at TIMESTAMPTZ,
    -- Settlement hook: set true only after on_final returned, so a crash in between retries it.
    final_handled            BOOLEAN          NOT NULL DEFAULT false,
    final_attempts           INT              NOT NULL DEFAULT 0,
    final_next_attempt_at    TIMESTAMPTZ      NOT NULL DEFAULT now(),
    final_lease_until        TIMESTAMPTZ,
    final_error              TEXT,
    CONSTRAINT generation_jobs_status CHECK (
        status IN ('queued', 'running', 'uploading', 'completed', 'failed', 'canceled')),
    CONSTRAINT generation_jobs_progress CHECK (progress >= 0 AND progress <= 1)
);
CREATE INDEX generation_jobs_claimable ON generation_jobs (run_after, queued_at)
    WHERE status IN ('queued', 'running', 'uploading');
CREATE INDEX generation_jobs_payer_active ON generation_jobs (payer)
    WHERE status IN ('queued', 'running', 'uploading');
CREATE INDEX generation_jobs_final_pending ON generation_jobs (final_next_attempt_at)
    WHERE NOT final_handled AND status IN ('completed', 'failed', 'canceled');

-- The pipeline of each job, one row per step; outputs are kept so a resumed job skips finished steps.
CREATE TABLE generation_job_steps (
    job_id          UUID        NOT NULL REFERENCES generation_jobs (id) ON DELETE CASCADE,
    idx             INT         NOT NULL,
    name            TEXT        NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'pending',
    attempts        INT         NOT NULL DEFAULT 0,
    output          JSONB,
    error_category  TEXT,
    error_message   TEXT,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    PRIMARY KEY (job_id, idx),
    CONSTRAINT generation_job_steps_status CHECK (status IN ('pending', 'running', 'succeeded', 'failed'))
);

-- Every status, progress and notice change, in order: the source for polling, SSE and webhooks.
CREATE TABLE generation_job_events (
    id        BIGSERIAL PRIMARY KEY,
    job_id    UUID             NOT NULL REFERENCES generation_jobs (id) ON DELETE CASCADE,
    kind      TEXT             NOT NULL,            -- status | progress | notice
    status    TEXT             NOT NULL,
    progress  DOUBLE PRECISION NOT NULL,
    text      TEXT             NOT NULL DEFAULT '',
    detail    JSONB            NOT NULL DEFAULT '{}'::jsonb,
    at        TIMESTAMPTZ      NOT NULL DEFAULT now()
);
CREATE INDEX generation_job_events_job ON generation_job_events (job_id, id);

-- Produced files. Bytes live in the database so any worker on any host can read what another wrote.
CREATE TABLE generation_artifacts (
    id          UUID PRIMARY KEY,
    job_id      UUID        NOT NULL REFERENCES generation_jobs (id) ON DELETE CASCADE,
    name        TEXT        NOT NULL,
    media_type  TEXT        NOT NULL,
    size        BIGINT      NOT NULL,
    sha256      TEXT        NOT NULL,
    content     BYTEA       NOT NULL,
    published   BOOLEAN     NOT NULL DEFAULT false,  -- false: an intermediate a later step may replace
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX generation_artifacts_job ON generation_artifacts (job_id);

-- Webhook deliveries (an outbox): written in the transaction that records the event, sent by a worker.
CREATE TABLE generation_webhook_deliveries (
    event_id        UUID PRIMARY KEY,                 -- X-Event-Id: the receiver's idempotency key
    job_id          UUID        NOT NULL REFERENCES generation_jobs (id) ON DELETE CASCADE,
    event_type      TEXT        NOT NULL,             -- job.progress | job.completed | job.failed | job.canceled
    payload         JSONB       NOT NULL,
    attempts        INT         NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    last_status     INT,
    last_error      TEXT,
    delivered_at    TIMESTAMPTZ,
    gave_up_at      TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX generation_webhook_deliveries_due ON generation_webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX generation_webhook_deliveries_job ON generation_webhook_deliveries (job_id, created_at);
