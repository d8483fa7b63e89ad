"""Serving room: what readers touch: routing (swap, rollback, history), search, the chatbot's
``Retriever`` and its query-log writer, and lookups for the CLI.
"""
