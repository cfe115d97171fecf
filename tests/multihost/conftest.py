"""Multi-host tests need root, ``ip netns`` and nftables: skipped with the reason otherwise."""

from __future__ import annotations

import pytest

from tests.multihost.harness import unavailable_reason

_REASON = unavailable_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    skip = pytest.mark.skip(reason=f"multihost: {_REASON}")
    for item in items:
        if "tests/multihost/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
