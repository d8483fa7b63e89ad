-- Progressive delivery: one row per rollout (canary or A/B) of a candidate against live,
-- and every decision about it. At most one active rollout per knowledge base.
CREATE TABLE kb_rollouts (
    id               bigserial PRIMARY KEY,
    kb_id            int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    candidate        int NOT NULL,
    control          int NOT NULL,
    strategy         text NOT NULL CHECK (strategy IN ('canary', 'ab')),
    steps            numeric(5, 2)[] NOT NULL,
    step_index       int NOT NULL DEFAULT 0,
    step_started_at  timestamptz NOT NULL,
    started_at       timestamptz NOT NULL,
    state            text NOT NULL CHECK (state IN (
                         'awaiting_approval', 'running', 'paused', 'promoted', 'aborted',
                         'kept_live')),
    policy           jsonb NOT NULL,
    last_analysis    jsonb,
    approval         jsonb,
    reason           text,
    finished_at      timestamptz,
    FOREIGN KEY (kb_id, candidate) REFERENCES kb_versions(kb_id, version),
    FOREIGN KEY (kb_id, control) REFERENCES kb_versions(kb_id, version)
);
CREATE UNIQUE INDEX kb_rollouts_one_active ON kb_rollouts (kb_id)
    WHERE state IN ('awaiting_approval', 'running', 'paused');

CREATE TABLE kb_rollout_events (
    id           bigserial PRIMARY KEY,
    rollout_id   bigint NOT NULL REFERENCES kb_rollouts(id) ON DELETE CASCADE,
    at           timestamptz NOT NULL,
    action       text NOT NULL,
    step_index   int NOT NULL,
    percent      numeric(5, 2) NOT NULL,
    detail       text NOT NULL,
    actor        text NOT NULL DEFAULT current_user,
    flow_run_id  text,
    analysis     jsonb
);
CREATE INDEX kb_rollout_events_rollout ON kb_rollout_events (rollout_id, id);
