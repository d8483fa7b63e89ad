-- A version that stayed live through its monitoring week is "proven" (post-deploy
-- monitoring): allow the status. Same list as 0001 plus 'proven'.
ALTER TABLE kb_versions DROP CONSTRAINT kb_versions_status_check;
ALTER TABLE kb_versions ADD CONSTRAINT kb_versions_status_check CHECK (status IN (
    'building', 'candidate', 'rejected', 'failed', 'live', 'canary', 'proven',
    'retired', 'rolled_back', 'archived'));
