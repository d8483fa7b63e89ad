"""What one drift-biased re-embedding is asked to do (the ``drift-reembed`` flow's form)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from kbrefresh.errors import ConfigError
from kbrefresh.refresh.request import KbName, describe_errors
from kbrefresh.retraining.profiles import load_profiles

SAMPLE_PROFILE = str(Path(__file__).resolve().parent.parent / "samples" / "helpcenter" / "kb.yaml")


def _loadable(path: str) -> str:
    load_profiles(path)  # raises ConfigError naming the file and the bad key
    return path


class ReembedRequest(BaseModel):
    """Which segment of which knowledge base to re-embed, and why (the drift event)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kb: KbName
    segment: str = Field(min_length=1, max_length=200,
                         description="Segment name in the profile file (category or doc-id glob)")
    profile_file: Annotated[str, AfterValidator(_loadable)] = Field(
        default=SAMPLE_PROFILE, min_length=1, description="KB config file with segment profiles")
    source: str | None = Field(default=None, min_length=1,
                               description="Source; empty means the live version's source")
    divergence: float | None = Field(default=None, ge=0, description="Drift KL that triggered it")
    urgency: str | None = Field(default=None, max_length=50, description="Drift severity")
    seed: int = Field(default=0, ge=0, description="Seed of the adapter's 80/10/10 split")
    train_adapter: bool = Field(default=True, description="Train the segment's query adapter")
    rollout: bool = Field(default=True, description="Start the canary (10 → 50 → 100) on success")

    def trigger(self) -> dict[str, Any]:
        return {"divergence": self.divergence, "urgency": self.urgency}


def parse_reembed(**values: Any) -> ReembedRequest:
    """Raises: ConfigError: one line naming each bad value."""
    try:
        return ReembedRequest(**values)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc).replace("refresh option", "re-embed option")) from exc
