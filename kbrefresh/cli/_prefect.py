"""The CLI's one doorway to a Prefect server: resume a paused flow run, emit an event.

Imported only inside the commands that need it, so plain commands never load Prefect and the
core library never imports it (tests/unit/test_structure.py allows this module alone).
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect.events import emit_event
from prefect.flow_runs import resume_flow_run


def resume_approval(flow_run_id: str, approved: bool, comment: str, by: str) -> None:
    """Resume the flow run paused for an approval, giving it the decision as its input."""
    resume_flow_run(uuid.UUID(flow_run_id),
                    run_input={"approved": approved, "comment": comment, "by": by})


def emit_kb_event(event: str, kb: str, payload: dict[str, Any]) -> bool:
    """Emit ``event`` about knowledge base ``kb``; True when Prefect accepted it."""
    sent = emit_event(event, resource={"prefect.resource.id": f"kbrefresh.kb.{kb}",
                                       "prefect.resource.name": kb}, payload=payload)
    return sent is not None
