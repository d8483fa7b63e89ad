-- kb_gate_results now holds one row per golden query (golden_key = 'q1:' || sha256 of
-- the search depth, the text searched (after the version's rename expansion) and the
-- version's query adapters), so a later gate
-- reuses live's result for every query it already answered, whatever set it came in.
-- Rows keyed by a whole golden set (written before) can never match again.
DELETE FROM kb_gate_results WHERE golden_key NOT LIKE 'q1:%';
COMMENT ON COLUMN kb_gate_results.golden_key IS
    'q1: per-query key: sha256 of [search depth, expanded query text, adapters digest if any]';
