"""Build room: load a source, check its quality, chunk, stage, reuse, embed and load a version.

``sources`` (directories, tables, SQL), ``quality`` (checks before anything is built),
``chunking`` (structure-aware chunks), ``staging`` (version rows, document catalog, reuse),
``embedding`` (embed only what is new, binary COPY).
"""
