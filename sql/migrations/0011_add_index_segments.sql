-- Vector storage per fingerprint and the split of each chunk table into segments.
-- storage: 'vector' (float32) or 'halfvec' (float16: half the memory, faster builds).
-- main_upto: rows with valid_from <= main_upto are in the table's main partial HNSW
-- index (NULL: none yet); delta_upto: rows with main_upto < valid_from <= delta_upto
-- are in a small delta HNSW index (NULL: none); later rows are scanned exactly.
ALTER TABLE kb_fingerprints
    ADD COLUMN storage text NOT NULL DEFAULT 'vector' CHECK (storage IN ('vector', 'halfvec')),
    ADD COLUMN main_upto int,
    ADD COLUMN delta_upto int;

-- Per-query results of a version's own gate run, keyed by a hash of the golden queries
-- and the search depth: a later gate against that version (as live) reuses them when
-- neither the version nor the golden set changed.
CREATE TABLE kb_gate_results (
    kb_id       int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    version     int NOT NULL,
    golden_key  text NOT NULL,
    results     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kb_id, version, golden_key),
    FOREIGN KEY (kb_id, version) REFERENCES kb_versions(kb_id, version) ON DELETE CASCADE
);
