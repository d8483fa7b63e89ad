"""Named fault points: where the kill -9 harness stops a process, deterministically.

The core calls :func:`fault_point` at the moments a crash is hardest to survive (a
transaction half done, a batch embedded but not loaded, the swap committed but not
recorded). It does nothing unless ``KBREFRESH_FAULT_POINT`` names that point
(``name`` or ``name:N`` for its N-th pass in this process); then the process sends
itself ``KBREFRESH_FAULT_SIGNAL`` (``KILL``, the default, or ``STOP`` so a test can
restart PostgreSQL under a frozen refresh and let it go on). It is a test hook, not a
setting: it is read from the environment at each call, never validated or logged.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV_POINT = "KBREFRESH_FAULT_POINT"
ENV_SIGNAL = "KBREFRESH_FAULT_SIGNAL"
_SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP}
_passes: Counter[str] = Counter()

# Every point the core calls, in the order a refresh meets them (tests parametrize on it).
POINTS = (
    "prepare_staged",  # prepare_data: documents recorded, chunks staged, not committed
    "embed_requested",  # a batch's vectors came back, not yet loaded
    "embed_loaded",  # a batch loaded and committed
    "index_created",  # segment indexes created; bounds not recorded, old ones not dropped
    "gate_judged",  # the gate's verdict computed, not stored
    "swap_routed",  # the routing row moved, the swap's transaction not committed
    "swap_committed",  # the swap committed; staging not cleared, old versions not retired
    "published",  # publish_version returned; the MLflow record not written
    "rollout_moved",  # a rollout step applied, its transaction not committed
    "monitor_judged",  # a monitor check judged a rollback, nothing recorded yet
)


def fault_point(name: str) -> None:
    """Stop or kill this process here when ``KBREFRESH_FAULT_POINT`` names ``name``."""
    wanted = os.environ.get(ENV_POINT)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] != (int(nth) if nth else 1):
        return
    signum = _SIGNALS.get(os.environ.get(ENV_SIGNAL, "KILL").upper(), signal.SIGKILL)
    os.kill(os.getpid(), signum)
