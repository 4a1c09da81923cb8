"""Every kind of target, default and named containers, against the target contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from persist.kvs.memory import drop_named_store
from persist.remote import open_target
from persist.testing.remote import TargetConformance, TargetFactory

from .conftest import KINDS, target_location_for


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["", "c1"], ids=["default", "named"])
def container_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestTargets(TargetConformance):
    @pytest.fixture
    def target_factory(
        self, kind: str, container_name: str, tmp_path: Path, request: pytest.FixtureRequest
    ) -> TargetFactory:
        location = target_location_for(kind, tmp_path)
        if location.startswith("memory:"):
            request.addfinalizer(lambda: drop_named_store(location[len("memory:") :]))
        return TargetFactory(
            open=lambda **kw: open_target(location, **kw),
            container=container_name,
            atomic_batches=kind != "dir",
            snapshot_scans=kind != "dir",
        )
