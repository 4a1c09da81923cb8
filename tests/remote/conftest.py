"""Where the remote tests put targets of each kind."""

from __future__ import annotations

import uuid
from pathlib import Path

KINDS = ["dir", "sqlite", "leveldb", "memory"]
#: Kinds that other processes can reach.
SHARED_KINDS = ["dir", "sqlite", "leveldb"]


def target_location_for(kind: str, tmp_path: Path, name: str = "target") -> str:
    if kind == "dir":
        return f"dir://{tmp_path / name}"
    if kind == "sqlite":
        return str(tmp_path / f"{name}.db")
    if kind == "leveldb":
        return f"leveldb://{tmp_path / name}.ldb"
    return f"memory:{name}-{uuid.uuid4().hex}"
