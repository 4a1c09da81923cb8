"""Issue 13, "Packaging": the distribution is persist-store, each backend
driver is an extra, and the base install needs none of them."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import persist

BIN = str(Path(sys.executable).parent / "persist")


def requirements() -> list[str]:
    return metadata.requires("persist-store") or []


def test_the_distribution_is_persist_store_and_the_import_name_persist() -> None:
    assert metadata.version("persist-store") == persist.__version__
    assert "persist" in metadata.distribution("persist-store").entry_points.names
    out = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # click reads the version of persist-store
    assert persist.__version__ in out.stdout


def test_the_base_install_needs_no_backend_driver() -> None:
    base = [r for r in requirements() if "extra ==" not in r]
    assert not [r for r in base if r.startswith(("plyvel", "psycopg"))], base
    assert any(r.startswith("apsw") for r in base)  # SQLite, the default, is built in


def test_each_driver_is_an_extra_with_a_wheel_for_every_python() -> None:
    extra = {r.replace(" ", "") for r in requirements() if "extra ==" in r}
    assert 'plyvel>=1.5;python_version<"3.13"andextra=="leveldb"' in extra
    assert 'plyvel-next>=2.1;python_version>="3.13"andextra=="leveldb"' in extra
    assert 'psycopg[binary]>=3.1;extra=="postgresql"' in extra
    # the test extra pulls in both drivers, so the README's one command installs all
    assert 'persist-store[leveldb,postgresql];extra=="test"' in extra
