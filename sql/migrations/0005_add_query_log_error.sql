-- Failed searches are logged too (error names the failure class), so rollouts and the
-- post-deploy monitor can measure an error rate per version. NULL means the search succeeded.
ALTER TABLE query_log ADD COLUMN error text;
CREATE INDEX query_log_kb_version_ts ON query_log (kb_id, version, ts);
