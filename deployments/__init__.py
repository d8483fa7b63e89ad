"""How the flows run: served from one process, or deployed by ``prefect.yaml`` to a work pool."""

from __future__ import annotations
