"""Fault points (kbrefresh/_faults.py) and the reliability report's frame."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from kbrefresh._faults import fault_point

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ("from kbrefresh._faults import fault_point\n"
          "for i in (1, 2, 3):\n"
          "    print(f'before {i}', flush=True)\n"
          "    fault_point('step')\n")


def run_script(point: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if point is not None:
        env["KBREFRESH_FAULT_POINT"] = point
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, check=False, timeout=60)


@pytest.mark.parametrize(("point", "code", "printed"), [
    (None, 0, 3), ("other", 0, 3), ("step", -9, 1), ("step:2", -9, 2), ("step:4", 0, 3),
])
def test_a_fault_point_kills_its_process_only_where_and_when_named(
    point: str | None, code: int, printed: int
) -> None:
    done = run_script(point)
    assert done.returncode == code
    assert done.stdout.splitlines() == [f"before {i}" for i in range(1, printed + 1)]


def test_a_fault_point_does_nothing_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KBREFRESH_FAULT_POINT", raising=False)
    fault_point("published")  # this test process goes on
    monkeypatch.setenv("KBREFRESH_FAULT_POINT", "swap_routed")
    fault_point("published")


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reliability", ROOT / "benchmarks" / "reliability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PART = '''TITLE = "fake"
def run(quick):
    return [{"fault": "kill -9 somewhere", "injected": 2, "survived": 2 if quick else 1,
             "queries_failed": 0, "rows_lost": 0, "recover_s": 1.234}]
'''


def test_the_report_runs_every_part_into_one_table(tmp_path: Path) -> None:
    report = load_report()
    (tmp_path / "reliability_fake.py").write_text(PART, "utf-8")
    (tmp_path / "reliability_broken.py").write_text("TITLE = 'broken'\n", "utf-8")
    assert list(report.discover(tmp_path)) == ["broken", "fake"]
    rows, clean = report.run_parts(["fake"], True, tmp_path)
    assert clean
    assert report.table(rows).splitlines() == [
        "| fault | injected | survived | queries failed | rows lost | time to recover (s) |",
        "|---|---:|---:|---:|---:|---:|",
        "| kill -9 somewhere | 2 | 2/2 | 0 | 0 | 1.2 |",
    ]
    rows, clean = report.run_parts([], False, tmp_path)
    assert not clean
    assert [r["fault"] for r in rows] == [
        ("broken: part crashed (TypeError: reliability_broken.py has no 'run'; a part exposes "
         "TITLE and run(quick))"), "kill -9 somewhere"]
    assert report.table(rows).splitlines()[2] == (
        "| broken: part crashed (TypeError: reliability_broken.py has no 'run'; a part exposes "
        "TITLE and run(quick)) | 0 | 0/0 | – | – | – |")


def test_a_row_without_a_key_is_refused_naming_the_part() -> None:
    report = load_report()
    with pytest.raises(ValueError, match=r"^part 'x' returned a row without \['rows_lost'"):
        report.check_row("x", {"fault": "f", "injected": 1, "survived": 1,
                               "queries_failed": 0, "recover_s": None})
