-- Query adapters (drift-biased re-embedding): a linear transform of one segment's query
-- embeddings that travels with the KB version it was trained for. The Retriever and the
-- segment gate apply it only to that version and only to queries classified into the
-- segment (nearest centroid); deleting or rolling back the version removes it.
CREATE TABLE kb_query_adapters (
    kb_id          int NOT NULL,
    version        int NOT NULL,
    segment        text NOT NULL,
    dims           int NOT NULL CHECK (dims > 0),
    -- float32, row-major dims x dims: adapted = normalize(query @ matrix)
    matrix         bytea NOT NULL,
    -- segment classifier: {segment name: centroid of its training queries' embeddings}
    centroids      jsonb NOT NULL,
    metrics        jsonb NOT NULL,
    mlflow_run_id  text,
    model_version  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kb_id, version, segment),
    FOREIGN KEY (kb_id, version) REFERENCES kb_versions (kb_id, version) ON DELETE CASCADE
);

-- The Retriever reads adapters with the reader role.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_reader') THEN
        GRANT SELECT ON kb_query_adapters TO kbrefresh_reader;
    END IF;
END
$$;
