-- A file's stat signature (context, inode, size, mtime, ctime) when it was last read and
-- had settled: a refresh does not open a file whose signature is unchanged
-- (kbrefresh.build.intake). NULL: read it next time.
ALTER TABLE kb_documents ADD COLUMN IF NOT EXISTS stat_sig text;
