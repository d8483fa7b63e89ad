-- The rename map a version was built with (a rebrand). Readers expand a query that
-- names an old name with the new one, so old names keep working after the swap.
CREATE TABLE kb_version_renames (
    kb_id     int NOT NULL,
    version   int NOT NULL,
    old_name  text NOT NULL CHECK (old_name <> ''),
    new_name  text NOT NULL CHECK (new_name <> '' AND new_name <> old_name),
    PRIMARY KEY (kb_id, version, old_name),
    FOREIGN KEY (kb_id, version) REFERENCES kb_versions(kb_id, version) ON DELETE CASCADE
);

-- The rename map on record for a KB (`kbrefresh rebrand` stores it): the retraining
-- check asks for a rebrand when satisfaction drops critically while one is pending.
CREATE TABLE kb_rename_maps (
    kb_id           int PRIMARY KEY REFERENCES kb(id) ON DELETE CASCADE,
    renames         jsonb NOT NULL CHECK (jsonb_typeof(renames) = 'object'),
    source          text,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    applied_version int
);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_reader') THEN
        GRANT SELECT ON kb_version_renames, kb_rename_maps TO kbrefresh_reader;
    END IF;
END
$$;
