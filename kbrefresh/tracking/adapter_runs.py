"""MLflow record of a query adapter's training: params, the loss curve, the data version,
the held-out result, and the adapter (a ``.npy`` artifact) as a registered model version."""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException

from kbrefresh.settings import Settings
from kbrefresh.tracking import _client as mf
from kbrefresh.tracking.registry import experiment_name, registered_model_name

logger = logging.getLogger(__name__)


def adapter_model_name(kb: str, segment: str) -> str:
    return f"{registered_model_name(kb)}-adapter-{mf.mlflow_key(segment)}"


def log_adapter_run(
    settings: Settings, *, kb: str, version: int, segment: str, matrix: np.ndarray[Any, Any],
    params: Mapping[str, Any], loss_curve: Sequence[tuple[float, float]],
    metrics: Mapping[str, float], register: bool,
) -> tuple[str, str | None]:
    """Log the training run; register the adapter when ``register``. Return (run id, model version).

    Raises:
        TrackingError: MLflow failed.
    """
    with mf.session(settings) as client:
        try:
            exp = mf.experiment_id(client, experiment_name(kb), kb)
            run = client.create_run(exp, run_name=f"adapter-{segment}-v{version}",
                                    tags={"kb": kb, "kb_version": str(version),
                                          "segment": segment, "kind": "query-adapter"})
            run_id = run.info.run_id
            for key, value in params.items():
                client.log_param(run_id, mf.mlflow_key(key), mf.text(value, 500))
            for step, (lam, loss) in enumerate(loss_curve):
                client.log_metric(run_id, "val_loss", loss, step=step)
                client.log_metric(run_id, "lambda", lam, step=step)
            for key, value in mf.finite(dict(metrics)).items():
                client.log_metric(run_id, mf.mlflow_key(key), value)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "adapter.npy"
                buf = io.BytesIO()
                np.save(buf, np.asarray(matrix, dtype=np.float32))
                path.write_bytes(buf.getvalue())
                client.log_artifact(run_id, str(path), artifact_path="adapter")
            client.set_terminated(run_id)
            model_version = None
            if register:
                name = adapter_model_name(kb, segment)
                mf.ensure_registered_model(client, name, kb)
                created = client.create_model_version(
                    name, source=f"{run.info.artifact_uri}/adapter", run_id=run_id,
                    tags={"kb": kb, "kb_version": str(version), "segment": segment},
                    description=f"Query adapter for segment {segment!r} of {kb!r} v{version}.")
                model_version = str(created.version)
        except (MlflowException, OSError) as exc:
            raise mf.TrackingError(
                f"could not record the {segment!r} adapter of {kb!r} v{version}: {exc}") from exc
    return run_id, model_version
