-- Catalog of knowledge bases, documents, versions and routing.
-- Chunk tables are created per (kb, embedding fingerprint) by kbrefresh.store.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE kb (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kb_documents (
    kb_id         int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    doc_id        text NOT NULL,
    uri           text NOT NULL,
    title         text NOT NULL,
    category      text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}',
    content_hash  text NOT NULL,
    modified_at   timestamptz,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz,
    PRIMARY KEY (kb_id, doc_id)
);

CREATE TABLE kb_fingerprints (
    id          serial PRIMARY KEY,
    kb_id       int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    fp_key      text NOT NULL,
    spec        jsonb NOT NULL,
    dims        int NOT NULL CHECK (dims > 0),
    table_name  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kb_id, fp_key)
);

CREATE TABLE kb_versions (
    kb_id           int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    version         int NOT NULL CHECK (version > 0),
    fingerprint_id  int NOT NULL REFERENCES kb_fingerprints(id),
    status          text NOT NULL CHECK (status IN (
                        'building', 'candidate', 'rejected', 'failed', 'live', 'canary',
                        'retired', 'rolled_back', 'archived')),
    dataset_tag     text NOT NULL,
    source          text NOT NULL,
    counts          jsonb NOT NULL DEFAULT '{}',
    quality         jsonb,
    smoke           jsonb,
    verdict         jsonb,
    mlflow_run_id   text,
    flow_run_id     text,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    live_at         timestamptz,
    retired_at      timestamptz,
    -- set when an abandoned version's row ranges were undone in its chunk table
    reverted_at     timestamptz,
    PRIMARY KEY (kb_id, version)
);

-- The dataset manifest of each version: which documents, at which content hash.
CREATE TABLE kb_version_documents (
    kb_id         int NOT NULL,
    version       int NOT NULL,
    doc_id        text NOT NULL,
    content_hash  text NOT NULL,
    PRIMARY KEY (kb_id, version, doc_id),
    FOREIGN KEY (kb_id, version) REFERENCES kb_versions(kb_id, version) ON DELETE CASCADE
);

-- Chunks of a build being prepared; emptied when the build ends.
CREATE TABLE kb_build_chunks (
    kb_id         int NOT NULL,
    version       int NOT NULL,
    doc_id        text NOT NULL,
    chunk_index   int NOT NULL,
    content       text NOT NULL,
    embed_text    text NOT NULL,
    content_hash  text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (kb_id, version, doc_id, chunk_index)
);
CREATE INDEX kb_build_chunks_hash ON kb_build_chunks (kb_id, version, content_hash);

-- The source of truth for serving: one short UPDATE swaps or rolls back.
CREATE TABLE kb_routing (
    kb_id           int PRIMARY KEY REFERENCES kb(id) ON DELETE CASCADE,
    live_version    int,
    canary_version  int,
    canary_percent  numeric(5, 2) NOT NULL DEFAULT 0
                    CHECK (canary_percent >= 0 AND canary_percent <= 100),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE kb_routing_history (
    id            bigserial PRIMARY KEY,
    kb_id         int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    action        text NOT NULL,
    from_version  int,
    to_version    int,
    reason        text NOT NULL,
    flow_run_id   text,
    changed_by    text NOT NULL DEFAULT current_user,
    changed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kb_routing_history_kb ON kb_routing_history (kb_id, id DESC);
