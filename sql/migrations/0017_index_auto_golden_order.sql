-- The automatic golden set takes the first 200 documents in md5(doc_id) order that are in
-- every compared version. With this index the gate reads them in that order and stops at
-- 200, instead of hashing, checking and sorting every document of the KB (0.4 s at 50k).
CREATE INDEX IF NOT EXISTS kb_documents_auto_golden_order ON kb_documents (kb_id, md5(doc_id));
