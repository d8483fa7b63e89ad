"""What one refresh is asked to do: the knowledge base, its source and the limits it respects.

``RefreshRequest`` holds every bound of a refresh once; the CLI's ``kbrefresh refresh``
options, the ``scheduled-refresh`` flow's parameters (its form in the Prefect UI) and
the retraining check's retrain-request payload are all validated by it, so a value
that one of them accepts the others accept too. A bad value, or a policy file that
does not load, fails here: before a version row, a table or an embedding exists.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from kbrefresh.build.budget import BuildBudget
from kbrefresh.build.quality import QualityPolicy
from kbrefresh.errors import ConfigError
from kbrefresh.gate.policy import AcceptancePolicy, load_policy
from kbrefresh.models import ChunkerConfig
from kbrefresh.retraining.profiles import KbProfiles, load_profiles
from kbrefresh.settings import Settings
from kbrefresh.store import validate_kb_name

# kb_<name>_live must fit PostgreSQL's 63-byte identifiers (store.validate_kb_name counts bytes).
KB_NAME_MAX_CHARS = 55
REASON_MAX_CHARS = 500

KbName = Annotated[
    str,
    Field(min_length=1, max_length=KB_NAME_MAX_CHARS, description="Knowledge base name"),
    AfterValidator(validate_kb_name),
]
SourceSpec = Annotated[
    str, Field(min_length=1, description="Directory, .csv/.parquet or SQLAlchemy URL")]
Reason = Annotated[
    str, Field(min_length=1, max_length=REASON_MAX_CHARS,
               description="Why; kept in the routing history")]


def _loadable_profiles(path: str | None) -> str | None:
    if path is not None:
        load_profiles(path)  # raises ConfigError naming the file and the bad key
    return path


def _loadable_policy(path: str | None) -> str | None:
    if path is not None:
        load_policy(path)  # raises ConfigError naming the file and the bad key
    return path


class RefreshRequest(BaseModel):
    """Which knowledge base to refresh from which source, and the limits the run respects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kb: KbName
    source: SourceSpec
    query: str | None = Field(default=None, description="SQL, when the source is a URL")
    max_chars: int = Field(default=ChunkerConfig.max_chars, ge=100, le=20000,
                           description="Largest chunk (characters)")
    overlap_chars: int = Field(default=ChunkerConfig.overlap_chars, ge=0, le=5000,
                               description="Characters shared by neighbouring chunks")
    header_template: str = Field(
        default=ChunkerConfig.header_template, min_length=6,
        description="Text embedded per chunk: {title}, {section}, {category}, {version}, {text}")
    max_shrink: float = Field(default=0.2, ge=0, le=1,
                              description="Largest share of documents the source may lose")
    max_age_days: float | None = Field(default=365.0, gt=0,
                                       description="Oldest the newest document may be (days)")
    keep_versions: int | None = Field(
        default=None, ge=1, le=100,
        description="Versions kept for rollback, live included; empty means "
                    "KBREFRESH_KEEP_VERSIONS (2)")
    lock_wait_seconds: float = Field(default=0, ge=0, le=3600,
                                     description="Seconds to wait for a running refresh")
    max_tokens: int | None = Field(
        default=None, ge=1, description="Most tokens this run may send to the embedder "
        "(the plan's estimate, checked before each batch); empty means "
        "KBREFRESH_BUILD_MAX_TOKENS or no limit")
    max_seconds: float | None = Field(
        default=None, gt=0, le=7 * 86400, description="Most seconds this run may take "
        "before its next embedding batch; empty means KBREFRESH_BUILD_MAX_SECONDS or no limit")
    reason: Reason = "scheduled refresh"
    publish: bool = Field(default=True, description="Swap live after the gate; false keeps "
                          "the gated candidate out of traffic for a canary or A/B rollout")
    policy_file: Annotated[str | None, AfterValidator(_loadable_policy)] = Field(
        default=None, min_length=1,
        description="Acceptance policy file (YAML/TOML); empty means the default policy")

    profile_file: Annotated[str | None, AfterValidator(_loadable_profiles)] = Field(
        default=None, min_length=1,
        description="KB config file with segment profiles (per-segment chunking); empty "
                    "means every document uses the chunking above")

    @model_validator(mode="after")
    def _valid_chunker(self) -> RefreshRequest:
        try:  # the chunker's own rules, checked before anything is created
            self.chunker()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def chunker(self) -> ChunkerConfig:
        return ChunkerConfig(max_chars=self.max_chars, overlap_chars=self.overlap_chars,
                             header_template=self.header_template)

    def profiles(self) -> KbProfiles | None:
        return load_profiles(self.profile_file) if self.profile_file else None

    def budget(self, settings: Settings) -> BuildBudget:
        """This run's budget: the request's limits, else the settings'."""
        return BuildBudget(
            max_tokens=self.max_tokens if self.max_tokens is not None else settings.build_max_tokens,
            max_seconds=(self.max_seconds if self.max_seconds is not None
                         else settings.build_max_seconds))

    def quality_policy(self) -> QualityPolicy:
        return QualityPolicy(max_shrink=self.max_shrink, max_age_days=self.max_age_days)

    def acceptance_policy(self) -> AcceptancePolicy | None:
        """The policy file's rules, or None for the gate's default policy."""
        return load_policy(self.policy_file) if self.policy_file else None


def parse_request(**values: Any) -> RefreshRequest:
    """Build a ``RefreshRequest`` from plain values (CLI options, an event payload).

    Raises:
        ConfigError: one line naming each bad value and what was expected.
    """
    try:
        return RefreshRequest(**values)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc)) from exc


def describe_errors(exc: ValidationError) -> str:
    """Say what is wrong with a refresh request, one ``name=value: why`` per problem."""
    problems = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        msg = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown refresh option {key!r}")
        elif key:
            problems.append(f"{key}={error['input']!r} is invalid: {msg[:1].lower()}{msg[1:]}")
        else:
            problems.append(msg)
    return "; ".join(problems)
