-- Golden queries can be archived instead of deleted: `kbrefresh golden prune` archives
-- those answerable only by documents the source deleted. The gate reads unarchived rows.
ALTER TABLE golden_queries
    ADD COLUMN archived_at     timestamptz,
    ADD COLUMN archived_reason text;
CREATE INDEX golden_queries_active ON golden_queries (kb_id, set_name) WHERE archived_at IS NULL;
