-- OpenAI Batch API jobs of a build: persisted before the flow polls, so a build that
-- crashed resumes polling the same provider batch instead of paying for a second one.
CREATE TABLE kb_embed_jobs (
    kb_id             int NOT NULL,
    version           int NOT NULL,
    job_no            int NOT NULL,
    provider_batch_id text NOT NULL,
    input_file_id     text NOT NULL,
    requests          int NOT NULL,
    status            text NOT NULL DEFAULT 'submitted'
                      CHECK (status IN ('submitted', 'loaded', 'failed')),
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    PRIMARY KEY (kb_id, version, job_no)
);
