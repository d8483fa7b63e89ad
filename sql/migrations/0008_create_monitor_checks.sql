-- Post-deploy monitoring: one row per check of a live version, the KB's production
-- baseline (set when a version is proven), and the archives of versions whose rows
-- were purged (Parquet files logged on the version's MLflow run or under data_dir).
ALTER TABLE kb_versions ADD COLUMN proven_at timestamptz;

CREATE TABLE monitor_checks (
    id            bigserial PRIMARY KEY,
    kb_id         int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    version       int NOT NULL,
    checked_at    timestamptz NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    -- 'pass' | 'warn' | 'fail' | 'no data'
    outcome       text NOT NULL,
    -- 'none' | 'rolled_back' | 'proven' | 'report only'
    action        text NOT NULL,
    measurements  jsonb NOT NULL,
    criteria      jsonb NOT NULL,
    flow_run_id   text
);
CREATE INDEX monitor_checks_kb_version ON monitor_checks (kb_id, version, checked_at);

CREATE TABLE kb_production_baseline (
    kb_id       int PRIMARY KEY REFERENCES kb(id) ON DELETE CASCADE,
    version     int NOT NULL,
    metrics     jsonb NOT NULL,
    set_at      timestamptz NOT NULL
);

CREATE TABLE kb_archives (
    kb_id        int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    version      int NOT NULL,
    -- an MLflow run id ("mlflow:<run>/archive") or a directory path
    location     text NOT NULL,
    chunks       int NOT NULL,
    documents    int NOT NULL,
    archived_at  timestamptz NOT NULL,
    expires_at   timestamptz,
    PRIMARY KEY (kb_id, version)
);
