-- Rows a refresh purges (no kept version uses them) are written to Parquet row segments
-- first, so a version retired beyond keep_versions stays restorable without exporting
-- it whole on every refresh (kbrefresh.release.row_archive).
CREATE TABLE IF NOT EXISTS kb_row_segments (
    id             serial PRIMARY KEY,
    kb_id          int NOT NULL REFERENCES kb(id) ON DELETE CASCADE,
    table_name     text NOT NULL,
    -- "mlflow:<run>/archive-rows/<file>" or a file path
    location       text NOT NULL,
    rows           int NOT NULL,
    -- the versions its rows cover: valid_from >= first_version, valid_to <= last_version
    -- (NULL: some rows were still open, written out because their table was dropped)
    first_version  int NOT NULL,
    last_version   int,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS kb_row_segments_table ON kb_row_segments (kb_id, table_name);
