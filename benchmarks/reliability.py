"""Reliability report: inject faults for real, print one table of what survived.

Parts are the modules ``benchmarks/reliability_*.py`` next to this file. Each exposes
``TITLE: str`` and ``run(quick: bool) -> list[dict]``; a row has the keys ``fault``,
``injected`` (how many times), ``survived`` (how many of those the system came through
as promised), ``queries_failed`` (reader searches that failed meanwhile), ``rows_lost``
(chunk rows of the source missing afterwards) and ``recover_s`` (seconds until the
next run had recovered; None when nothing had to recover). A part that raises is
reported as one row that did not survive, and the script exits 1.

Run: ``python benchmarks/reliability.py [--quick] [--only NAME ...] [--json]``
(NAME: ``kill`` for ``reliability_kill.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEYS = ("fault", "injected", "survived", "queries_failed", "rows_lost", "recover_s")
HEADERS = ("fault", "injected", "survived", "queries failed", "rows lost",
           "time to recover (s)")


def discover(directory: Path = HERE) -> dict[str, Path]:
    """Return part name -> module path for every ``reliability_<name>.py`` in ``directory``."""
    return {p.stem.removeprefix("reliability_"): p
            for p in sorted(directory.glob("reliability_*.py"))}


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"reliability_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr in ("TITLE", "run"):
        if not hasattr(module, attr):
            raise TypeError(f"{path.name} has no {attr!r}; a part exposes TITLE and run(quick)")
    return module


def check_row(part: str, row: dict[str, Any]) -> dict[str, Any]:
    """Refuse a row that breaks the contract, naming the part and the key."""
    missing = [k for k in KEYS if k not in row]
    if missing:
        raise ValueError(f"part {part!r} returned a row without {missing!r}: {row!r}")
    return {k: row[k] for k in KEYS}


def run_parts(names: Sequence[str], quick: bool,
              directory: Path = HERE) -> tuple[list[dict[str, Any]], bool]:
    """Run each part; return every row and whether all parts ran to the end."""
    rows: list[dict[str, Any]] = []
    clean = True
    for name, path in discover(directory).items():
        if names and name not in names:
            continue
        started = time.perf_counter()
        try:
            module = load(name, path)
            print(f"[{name}] {module.TITLE} ...", file=sys.stderr, flush=True)
            rows += [check_row(name, r) for r in module.run(quick)]
        except Exception as exc:  # noqa: BLE001  (a broken part is a row, not the end of the report)
            traceback.print_exc(file=sys.stderr)
            rows.append({"fault": f"{name}: part crashed ({type(exc).__name__}: {exc})"[:120],
                         "injected": 0, "survived": 0, "queries_failed": None,
                         "rows_lost": None, "recover_s": None})
            clean = False
        print(f"[{name}] done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return rows, clean


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "recover_s" and isinstance(value, int | float):
        return f"{value:.1f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown table (pastes into the README as it is)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(
        ["---"] + ["---:"] * (len(HEADERS) - 1)) + "|"]
    for row in rows:
        cells = [_cell(k, row[k]) for k in KEYS]
        if isinstance(row["survived"], int) and not isinstance(row["survived"], bool):
            cells[2] = f"{row['survived']}/{row['injected']}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few faults per part (minutes)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help=f"run only this part (repeatable); known: {', '.join(discover())}")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - set(discover()))
    if unknown:
        parser.error(f"unknown part(s) {unknown!r}; expected one of {sorted(discover())!r}")
    sys.path.insert(0, str(ROOT))  # parts import kbrefresh and tests.support from the checkout
    rows, clean = run_parts(args.only, args.quick)
    print(json.dumps(rows, indent=2, default=str) if args.json else table(rows))
    survived = all(r["survived"] == r["injected"] for r in rows)
    return 0 if clean and survived else 1


if __name__ == "__main__":
    sys.exit(main())
