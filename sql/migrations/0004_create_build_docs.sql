-- Documents a build touches (new, changed or deleted since its base version): only their
-- chunks are staged, and only their rows can be closed, so a refresh costs what changed.
CREATE TABLE kb_build_docs (
    kb_id    int NOT NULL,
    version  int NOT NULL,
    doc_id   text NOT NULL,
    PRIMARY KEY (kb_id, version, doc_id)
);
