-- What a document's file looked like when it was last parsed: a refresh parses a file
-- again only when this key changes (its bytes, uri, the loader, the profiles or the
-- quality policy's per-document limits), so unchanged files cost a read and a hash.
-- mtime_dated: the document's modified_at came from the file's mtime (no 'updated' field).
ALTER TABLE kb_documents ADD COLUMN source_key text, ADD COLUMN mtime_dated boolean;
