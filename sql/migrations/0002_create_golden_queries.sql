-- Golden queries per knowledge base: labels are document ids, so they survive re-chunking.
CREATE TABLE golden_queries (
    id          bigserial PRIMARY KEY,
    kb_id       int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    set_name    text NOT NULL,
    query       text NOT NULL,
    relevant    text[] NOT NULL CHECK (cardinality(relevant) > 0),
    slice       text NOT NULL DEFAULT 'all',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX golden_queries_kb_set ON golden_queries (kb_id, set_name);
