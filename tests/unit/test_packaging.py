"""The wheel's contents as pyproject.toml declares them (.ci/run builds and runs the wheel)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]


def test_the_wheel_installs_every_kbrefresh_package_and_nothing_else() -> None:
    on_disk = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "kbrefresh").rglob("__init__.py")
    }
    assert set(CONFIG["packages"]) == on_disk | {"kbrefresh._migrations"}
    assert {name.split(".")[0] for name in CONFIG["packages"]} == {"kbrefresh"}


def test_the_migrations_package_is_the_repositorys_sql_migrations() -> None:
    assert CONFIG["package-dir"] == {"kbrefresh._migrations": "sql/migrations"}
    assert CONFIG["package-data"]["kbrefresh._migrations"] == ["*.sql"]
    assert sorted((ROOT / "sql" / "migrations").glob("*.sql"))


def test_samples_and_type_marker_are_package_data() -> None:
    assert CONFIG["package-data"]["kbrefresh"] == ["samples/**/*", "py.typed"]
    assert (ROOT / "kbrefresh" / "samples" / "helpcenter" / "golden").is_dir()
