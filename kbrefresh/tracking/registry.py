"""MLflow tracking and model registry for knowledge-base versions.

One run per build in experiment ``kbrefresh/<kb>``: parameters (fingerprint,
chunking, dataset tag, source), metrics (counts, tokens, cost, durations, every
gate metric), report artifacts, and the document manifest as a dataset input.
Each published version is a model version of ``kbrefresh-<kb>`` (a pyfunc that
searches that exact version) with aliases ``champion`` (live) and ``challenger``
(canary). Postgres routing is the source of truth: :func:`sync_registry` moves
the aliases to match it.

Database URLs reach MLflow only through :func:`~kbrefresh.db.describe_database`,
and every logged param and tag passes through :func:`~kbrefresh.db.redact_url`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from kbrefresh import store
from kbrefresh._text import redact_url, slug
from kbrefresh.db import connect, describe_database
from kbrefresh.errors import VersionError
from kbrefresh.gate.evaluation import GateOutcome
from kbrefresh.settings import Settings
from kbrefresh.tracking import _client as mf
from kbrefresh.tracking._client import TrackingError, mlflow_key, tracking_uri

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "TrackingError",
    "experiment_name",
    "gate_metrics",
    "log_build",
    "mlflow_key",
    "register_version",
    "registered_model_name",
    "registry_state",
    "set_aliases",
    "sync_registry",
    "tracking_uri",
]

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_NAME_PREFIX = "kbrefresh-"

Artifact = str | bytes | Path | Mapping[str, Any]


def registered_model_name(kb: str) -> str:
    """Return ``kbrefresh-<kb>``, or a slug plus a short hash when ``kb`` is not a safe slug."""
    return MODEL_NAME_PREFIX + slug(kb)


def experiment_name(kb: str) -> str:
    """Return ``kbrefresh/<kb>`` with the same slug as :func:`registered_model_name`."""
    return f"kbrefresh/{slug(kb)}"


def gate_metrics(outcome: GateOutcome) -> dict[str, float]:
    """Return every gate metric as ``gate.<role>.<metric>[.<slice>]`` under MLflow-safe names.

    E.g. ``hit@5`` of slice ``technical`` for the candidate is ``gate.candidate.hit_5.technical``.
    """
    ev, verdict = outcome.evaluation, outcome.verdict
    raw: dict[str, float] = {
        "gate.passed": float(verdict.passed),
        "gate.rules": float(len(verdict.rules)),
        "gate.rules_failed": float(len(verdict.failed_rules)),
        "gate.n_queries": float(ev.n_queries),
        "gate.smoke_failures": float(len(ev.smoke_failures)),
        "gate.candidate.size_bytes": float(ev.candidate_size),
    }
    if ev.live_size is not None:
        raw["gate.live.size_bytes"] = float(ev.live_size)
    for role, table in (("candidate", ev.candidate), ("live", ev.live)):
        if table is None:
            continue
        for metric in table.overall:
            raw[f"gate.{role}.{metric}"] = _or_nan(table.get(metric))
        for slice_ in table.slices:
            for metric in table.by_slice[slice_]:
                raw[f"gate.{role}.{metric}.{slice_}"] = _or_nan(table.get(metric, slice_))
    return mf.finite(mf.keyed(raw))


def log_build(
    settings: Settings,
    *,
    kb: str,
    version: int,
    params: Mapping[str, Any],
    metrics: Mapping[str, float],
    artifacts: Mapping[str, Artifact],
    manifest: Sequence[tuple[str, str]],
    dataset_tag: str,
    source: str,
    tags: Mapping[str, str],
) -> str:
    """Record one build as an MLflow run and return its id (also stored on the version row).

    Param values that are not strings are logged as JSON and cut to MLflow's limit;
    metric and param names are made MLflow-safe (:func:`mlflow_key`); non-finite
    metrics are left out. ``artifacts`` maps a relative artifact path to text, bytes,
    a file, or a dict (written as JSON). ``manifest`` (doc id, content hash) becomes
    the run's dataset input named ``dataset_tag``.

    Raises:
        ConfigError: a metric is not a number or an artifact path is not relative.
        TrackingError: MLflow failed; a run that was started is marked FAILED.
    """
    safe_source = redact_url(source)
    run_params = mf.keyed({"kb": kb, "kb_version": version, "dataset_tag": dataset_tag,
                           "source": safe_source, "database": describe_database(settings),
                           **params})
    run_metrics = mf.finite(mf.keyed({n: mf.number(n, v) for n, v in metrics.items()}))
    mf.check_artifact_paths(artifacts)
    run_tags = mf.keyed({"kb": kb, "kb_version": str(version), "dataset_tag": dataset_tag,
                         **tags})
    dataset = mf.manifest_dataset(manifest, dataset_tag, safe_source, kb)
    with mf.session(settings) as client:
        try:
            experiment = mf.experiment_id(client, experiment_name(kb), kb)
            with mlflow.start_run(experiment_id=experiment, run_name=f"{slug(kb)}-v{version}",
                                  tags={k: mf.text(v, mf.MAX_TAG) for k, v in run_tags.items()}
                                  ) as run:
                run_id = str(run.info.run_id)
                mlflow.log_params({k: mf.text(v, mf.MAX_PARAM) for k, v in run_params.items()})
                mlflow.log_metrics(run_metrics)
                mlflow.log_input(dataset, context="build")
                mf.log_artifacts(client, run_id, artifacts)
        except (MlflowException, OSError) as exc:
            raise TrackingError(
                f"could not log build v{version} of {kb!r} to MLflow at "
                f"{redact_url(tracking_uri(settings))!r}: {exc}"
            ) from exc
    _record_run_id(settings, kb, version, run_id)
    logger.info("logged build v%d of %r as MLflow run %s", version, kb, run_id)
    return run_id


def register_version(
    settings: Settings,
    *,
    kb: str,
    version: int,
    run_id: str,
    table: str,
    fingerprint: Mapping[str, Any],
) -> str:
    """Log the version's pyfunc model into ``run_id``, register it, return the model version.

    Idempotent: a model version already tagged with this ``kb_version`` is returned as is.

    Raises:
        TrackingError: the run does not exist or MLflow failed.
    """
    name = registered_model_name(kb)
    with mf.session(settings) as client:
        try:
            found = mf.find_version(client, name, version)
            if found is not None:
                return found
            mf.ensure_registered_model(client, name, kb)
            info = mf.log_model_into(client, run_id, kb, version, fingerprint)
            created = client.create_model_version(
                name, source=info.model_uri, run_id=run_id, model_id=info.model_id,
                description=f"Version {version} of knowledge base {kb!r} (table {table}).",
                tags={"kb": kb, "kb_version": str(version), "table": table,
                      "fingerprint": json.dumps(dict(fingerprint), sort_keys=True, default=str)},
            )
        except (MlflowException, OSError) as exc:
            raise TrackingError(
                f"could not register version {version} of {kb!r} from run {run_id!r} "
                f"as MLflow model {name!r}: {exc}"
            ) from exc
    logger.info("registered version %d of %r as %s version %s", version, kb, name, created.version)
    return str(created.version)


def set_aliases(
    settings: Settings, *, kb: str, champion: int | None, challenger: int | None
) -> None:
    """Point ``champion`` and ``challenger`` at the model versions of those KB versions.

    None deletes the alias. Nothing changes unless every named version is registered.

    Raises:
        TrackingError: a KB version was never registered, or MLflow failed.
    """
    name = registered_model_name(kb)
    wanted = {CHAMPION: champion, CHALLENGER: challenger}
    with mf.session(settings) as client:
        try:
            resolved: dict[str, str] = {}
            for alias, kb_version in wanted.items():
                if kb_version is None:
                    continue
                found = mf.find_version(client, name, kb_version)
                if found is None:
                    raise TrackingError(
                        f"version {kb_version} of {kb!r} is not registered in MLflow model "
                        f"{name!r}; register it first or run sync_registry"
                    )
                resolved[alias] = found
            current = mf.aliases(client, name)
            for alias, model_version in resolved.items():
                client.set_registered_model_alias(name, alias, model_version)
            for alias in sorted((wanted.keys() - resolved.keys()) & current.keys()):
                client.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            raise TrackingError(f"could not set aliases of MLflow model {name!r}: {exc}") from exc


def registry_state(settings: Settings, kb: str) -> dict[str, int | None]:
    """Return the KB version each alias points at (``champion``/``challenger`` None when unset)."""
    name = registered_model_name(kb)
    state: dict[str, int | None] = {CHAMPION: None, CHALLENGER: None}
    with mf.session(settings) as client:
        try:
            for alias, model_version in mf.aliases(client, name).items():
                tag = client.get_model_version(name, model_version).tags.get("kb_version")
                state[alias] = None if tag is None else int(tag)
        except MlflowException as exc:
            raise TrackingError(f"could not read MLflow model {name!r}: {exc}") from exc
    return state


def sync_registry(settings: Settings, kb: str | None = None) -> list[str]:
    """Make ``champion``/``challenger`` match the live/canary versions in Postgres.

    Versions not registered yet are registered from their build run; a version
    with no run (or one missing from this tracking store) gets a minimal run first.
    Returns one line per alias that moved, e.g. ``"helpcenter: champion 3 -> 2"``.

    Raises:
        VersionError: ``kb`` is unknown, or routing names a version that does not exist.
        TrackingError: MLflow failed.
    """
    changes: list[str] = []
    for name, wanted, rows in _routing_targets(settings, kb):
        for kb_version in sorted({v for v in wanted.values() if v is not None}):
            _ensure_registered(settings, name, *rows[kb_version])
        before = registry_state(settings, name)
        set_aliases(settings, kb=name, champion=wanted[CHAMPION], challenger=wanted[CHALLENGER])
        for alias, target in wanted.items():
            if before.get(alias) != target:
                changes.append(f"{name}: {alias} {_shown(before.get(alias))} -> {_shown(target)}")
    for line in changes:
        logger.info("model registry: %s", line)
    return changes


# A version routing names, with its manifest (doc id, content hash), for the registry.
_Target = tuple[store.VersionInfo, list[tuple[str, str]]]


def _routing_targets(
    settings: Settings, kb: str | None
) -> list[tuple[str, dict[str, int | None], dict[int, _Target]]]:
    """Return (kb, alias → wanted version, version → (row, manifest)) per KB."""
    targets = []
    with connect(settings) as conn:
        for name in [kb] if kb is not None else store.list_kbs(conn):
            kb_id = store.get_kb_id(conn, name)
            route = conn.execute(
                "SELECT live_version, canary_version FROM kb_routing WHERE kb_id = %s", (kb_id,)
            ).fetchone() or {}
            wanted = {CHAMPION: route.get("live_version"), CHALLENGER: route.get("canary_version")}
            versions = {r.version: r for r in store.list_versions(conn, kb_id)}
            rows: dict[int, _Target] = {}
            for v in {v for v in wanted.values() if v is not None}:
                if v not in versions:
                    raise VersionError(
                        f"routing of {name!r} names version {v}, which does not exist"
                    )
                rows[v] = (versions[v], list(store.version_manifest(conn, kb_id, v).items()))
            targets.append((name, wanted, rows))
    return targets


def _ensure_registered(
    settings: Settings, kb: str, row: store.VersionInfo, manifest: list[tuple[str, str]]
) -> None:
    version = row.version
    run_id = row.mlflow_run_id
    with mf.session(settings) as client:
        try:
            if mf.find_version(client, registered_model_name(kb), version) is not None:
                return
            if run_id and not mf.run_exists(client, str(run_id)):
                logger.warning("run %s of %r v%d is not in this tracking store; logging a new one",
                               run_id, kb, version)
                run_id = None
        except MlflowException as exc:
            raise TrackingError(f"could not look up version {version} of {kb!r}: {exc}") from exc
    if not run_id:
        run_id = _minimal_run(settings, kb, row, manifest)
    register_version(settings, kb=kb, version=version, run_id=str(run_id),
                     table=row.table_name, fingerprint=dict(row.fingerprint))


def _minimal_run(
    settings: Settings, kb: str, row: store.VersionInfo, manifest: list[tuple[str, str]]
) -> str:
    """Log a run for a version built without tracking, from what Postgres kept of it."""
    return log_build(
        settings, kb=kb, version=row.version, params={"fingerprint": dict(row.fingerprint)},
        metrics={f"count.{k}": float(v) for k, v in row.counts.items()
                 if isinstance(v, int | float) and not isinstance(v, bool)},
        artifacts={"verdict.json": dict(row.verdict)} if row.verdict else {},
        manifest=manifest, dataset_tag=row.dataset_tag,
        source=row.source, tags={"kbrefresh.origin": "sync_registry"},
    )


def _record_run_id(settings: Settings, kb: str, version: int, run_id: str) -> None:
    with connect(settings) as conn:
        updated = conn.execute(
            "UPDATE kb_versions SET mlflow_run_id = %s"
            " WHERE kb_id = (SELECT id FROM kb WHERE name = %s) AND version = %s",
            (run_id, kb, version),
        ).rowcount
        conn.commit()
    if updated == 0:
        logger.warning("version %d of %r is not in the database; MLflow run %s not recorded",
                       version, kb, run_id)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _shown(version: int | None) -> str:
    return "none" if version is None else str(version)
