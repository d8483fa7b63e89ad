"""MLflow plumbing behind :mod:`kbrefresh.tracking`: names, sessions, artifacts, the model.

MLflow's fluent API (runs, ``log_input``, ``log_model``) reads a process-wide
tracking URI; :func:`session` holds a lock, points it at the configured store and
puts the previous one back.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from kbrefresh._text import redact_url, short_hash
from kbrefresh.errors import ConfigError, KBRefreshError
from kbrefresh.settings import Settings

MODEL_ARTIFACT = "knowledge_base"
DEFAULT_K = 5  # hits per query when predict gets no ``k`` param
# Never imported here: the file calls mlflow.models.set_model() when it runs.
_MODEL_CODE = Path(__file__).with_name("pyfunc.py")
_SAFE_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
# MLflow's limits (mlflow.utils.validation), applied here so long values are cut, not refused.
MAX_KEY = 250
MAX_PARAM = 6000
MAX_TAG = 8000
_MAX_DATASET_NAME = 500
_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
_lock = threading.RLock()


class TrackingError(KBRefreshError):
    """MLflow could not record a build or update the model registry."""


def tracking_uri(settings: Settings) -> str:
    """Return the configured tracking URI, or a SQLite store under the data dir."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(settings.data_dir / 'mlflow.db').resolve()}"


@contextmanager
def session(settings: Settings) -> Iterator[MlflowClient]:
    """Yield a client for the configured store, with the fluent API pointed at it too."""
    uri = tracking_uri(settings)
    with _lock:
        active = mlflow.active_run()
        if active is not None:
            raise TrackingError(
                f"an MLflow run ({active.info.run_id!r}) is already active in this thread; "
                "end it before kbrefresh logs builds"
            )
        env_before = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            with _use_tracking_uri(uri):
                yield MlflowClient(tracking_uri=uri, registry_uri=uri)
        finally:
            # Restoring an unset global URI also unsets the variable, which the caller may own.
            if env_before is not None:
                os.environ["MLFLOW_TRACKING_URI"] = env_before


def mlflow_key(name: str) -> str:
    """Return ``name`` with characters MLflow refuses in metric/param keys replaced by ``_``."""
    key = _BAD_KEY_CHARS.sub("_", name) or "_"
    if set(key) == {"."}:  # "." and ".." would resolve to other paths
        key = "_" * len(key)
    if len(key) > MAX_KEY:
        key = f"{key[:MAX_KEY - 9]}_{short_hash(name)}"
    return key


def keyed(values: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``values`` under MLflow-safe keys; names that collide get a hash suffix."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        key = mlflow_key(name)
        if key in out:
            key = mlflow_key(f"{key}_{short_hash(name)}")
        out[key] = value
    return out


def number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metric {name!r} is {value!r}; expected a number") from exc


def text(value: Any, limit: int) -> str:
    """Return ``value`` as text (JSON unless a string), URL passwords masked, cut to ``limit``."""
    out = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    out = redact_url(out)
    return out if len(out) <= limit else out[: limit - 1] + "…"


def finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if math.isfinite(v)}


def artifact_root(uri: str) -> str | None:
    """Artifacts of a local SQLite store live beside it, not in ./mlruns of the cwd."""
    if not uri.startswith("sqlite:///"):
        return None  # a tracking server decides where its artifacts go
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()


def experiment_id(client: MlflowClient, name: str, kb: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    root = artifact_root(client.tracking_uri)
    location = f"{root}/{hashlib.sha256(name.encode()).hexdigest()[:16]}" if root else None
    try:
        return str(client.create_experiment(name, artifact_location=location, tags={"kb": kb}))
    except MlflowException:
        experiment = client.get_experiment_by_name(name)  # another process created it first
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def manifest_dataset(
    manifest: Sequence[tuple[str, str]], dataset_tag: str, source: str, kb: str
) -> PandasDataset:
    rows = sorted((str(doc_id), str(content_hash)) for doc_id, content_hash in manifest)
    # Our own digest: MLflow's pandas digest fails on an empty frame under pandas 3.
    digest = hashlib.sha256("".join(f"{d}\t{h}\n" for d, h in rows).encode("utf-8")).hexdigest()
    return from_pandas(
        pd.DataFrame(rows, columns=["doc_id", "content_hash"]),
        source=CodeDatasetSource(tags={"kb": kb, "source": source}),
        name=dataset_tag[:_MAX_DATASET_NAME],
        digest=digest[:16],
    )


def check_artifact_paths(artifacts: Mapping[str, Any]) -> None:
    for path in artifacts:
        posix = PurePosixPath(path)
        if not posix.parts or posix.is_absolute() or ".." in posix.parts or "\\" in path:
            raise ConfigError(
                f"artifact path {path!r} must be relative, without '..' or backslashes"
            )


def log_artifacts(
    client: MlflowClient,
    run_id: str,
    artifacts: Mapping[str, str | bytes | Path | Mapping[str, Any]],
) -> None:
    """Write text, bytes, files and dicts (as JSON) under their paths and log them in one go."""
    if not artifacts:
        return
    with tempfile.TemporaryDirectory(prefix="kbrefresh-artifacts-") as tmp:
        for name, value in artifacts.items():
            target = Path(tmp, *PurePosixPath(name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(value, Path):
                shutil.copyfile(value, target)
            elif isinstance(value, bytes):
                target.write_bytes(value)
            elif isinstance(value, str):
                target.write_text(value, "utf-8")
            else:
                target.write_text(json.dumps(value, indent=2, sort_keys=True, default=str), "utf-8")
        client.log_artifacts(run_id, tmp)


def log_model_into(
    client: MlflowClient, run_id: str, kb: str, version: int, fingerprint: Mapping[str, Any]
) -> ModelInfo:
    """Log the version's pyfunc (models-from-code) into the existing run ``run_id``."""
    previous = client.get_run(run_id).info.status
    mlflow.start_run(run_id=run_id)
    try:
        with warnings.catch_warnings():
            # "No input example": predicting one would need the database at logging time.
            warnings.simplefilter("ignore", UserWarning)
            info: ModelInfo = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(_MODEL_CODE),
                model_config={"kb": kb, "version": version, "fingerprint": dict(fingerprint)},
                signature=_signature(),
                pip_requirements=_requirements(),
            )
            return info
    finally:
        # Logging a model must not change how the build run ended.
        mlflow.end_run(previous if previous != "RUNNING" else "FINISHED")


def _signature() -> ModelSignature:
    outputs = [ColSpec("string", "query"), ColSpec("long", "rank"), ColSpec("string", "kb"),
               ColSpec("long", "version"), ColSpec("long", "chunk_id"), ColSpec("string", "doc_id"),
               ColSpec("long", "chunk_index"), ColSpec("double", "similarity"),
               ColSpec("string", "content"), ColSpec("string", "metadata")]
    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema(outputs),  # type: ignore[arg-type]
        params=ParamSchema([ParamSpec("k", "long", DEFAULT_K)]),
    )


def _requirements() -> list[str]:
    try:
        own = f"kbrefresh=={package_version('kbrefresh')}"
    except PackageNotFoundError:
        own = "kbrefresh"
    return [own, f"mlflow-skinny=={mlflow.__version__}"]


def ensure_registered_model(client: MlflowClient, name: str, kb: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != _NOT_FOUND:
            raise
        client.create_registered_model(
            name, tags={"kb": kb}, description=f"Versions of knowledge base {kb!r}."
        )


def find_version(client: MlflowClient, name: str, kb_version: int) -> str | None:
    """Return the first model version of ``name`` tagged ``kb_version``, or None."""
    # ``name`` is a slug (registered_model_name) and the version an int: safe to quote.
    found = client.search_model_versions(
        f"name = '{name}' and tags.kb_version = '{int(kb_version)}'"
    )
    return str(min(int(mv.version) for mv in found)) if found else None


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Return alias → model version of ``name`` (empty when the model does not exist)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == _NOT_FOUND:
            return {}
        raise
    return {str(alias): str(mv) for alias, mv in (model.aliases or {}).items()}


def run_exists(client: MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == _NOT_FOUND:
            return False
        raise
    return True
