-- What the Retriever client logs, the feedback it receives, and retrain decisions.
CREATE TABLE query_log (
    query_id        uuid PRIMARY KEY,
    kb_id           int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    ts              timestamptz NOT NULL,
    session_hash    text NOT NULL,
    query           text NOT NULL,
    version         int NOT NULL,
    latency_ms      real NOT NULL,
    top_doc_ids     text[] NOT NULL,
    top_similarity  real,
    -- a 64-d random projection of the query embedding: enough for drift clusters
    query_sketch    real[]
);
CREATE INDEX query_log_kb_ts ON query_log (kb_id, ts);

-- No foreign key: feedback can arrive before its query's log batch is flushed.
CREATE TABLE feedback (
    id        bigserial PRIMARY KEY,
    query_id  uuid NOT NULL,
    kb_id     int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    ts        timestamptz NOT NULL,
    rating    smallint CHECK (rating BETWEEN 1 AND 5),
    thumbs    boolean,
    CHECK (rating IS NOT NULL OR thumbs IS NOT NULL)
);
CREATE INDEX feedback_kb_ts ON feedback (kb_id, ts);
CREATE INDEX feedback_query ON feedback (query_id);

CREATE TABLE retrain_decisions (
    id          bigserial PRIMARY KEY,
    kb_id       int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    action      text NOT NULL,
    urgency     text NOT NULL,
    driver      text NOT NULL,
    summary     text NOT NULL,
    signals     jsonb NOT NULL,
    dispatched  jsonb,
    flow_run_id text
);
CREATE INDEX retrain_decisions_kb ON retrain_decisions (kb_id, decided_at DESC);

-- Roles for the chatbot side: searching needs only kbrefresh_reader, logging only
-- kbrefresh_logger. Created when the migrating user may create roles; grant them to
-- login roles yourself (GRANT kbrefresh_reader TO chatbot;). Chunk tables created
-- later are granted to kbrefresh_reader when they are created.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_reader')
       AND (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
        CREATE ROLE kbrefresh_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_logger')
       AND (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
        CREATE ROLE kbrefresh_logger NOLOGIN;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_reader') THEN
        EXECUTE 'GRANT USAGE ON SCHEMA ' || quote_ident(current_schema()) || ' TO kbrefresh_reader';
        GRANT SELECT ON kb, kb_routing, kb_versions, kb_fingerprints, kb_documents TO kbrefresh_reader;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_logger') THEN
        EXECUTE 'GRANT USAGE ON SCHEMA ' || quote_ident(current_schema()) || ' TO kbrefresh_logger';
        GRANT INSERT ON query_log, feedback TO kbrefresh_logger;
        GRANT USAGE ON SEQUENCE feedback_id_seq TO kbrefresh_logger;
    END IF;
END
$$;
