"""Contract fixtures: the sandbox behind recording proxies, one per simulated API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from provisioner.sandbox.app import Sandbox
from tests.contract.recorder import RecordingProxy


class Called:
    """Wraps an adapter and remembers which of its public methods a test called."""

    def __init__(self, target: Any) -> None:
        self._target = target
        self.names: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if callable(attr) and not name.startswith("_"):
            self.names.add(name)
        return attr


def public_methods(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}


def _origin(url: str, suffix: str) -> str:
    assert url.endswith(suffix), url
    return url.removesuffix(suffix)


@pytest.fixture
def vultr_wire(sandbox: Sandbox) -> Iterator[RecordingProxy]:
    with RecordingProxy(_origin(sandbox.vultr_url, "/v2")) as proxy:
        yield proxy


@pytest.fixture
def cloudflare_wire(sandbox: Sandbox) -> Iterator[RecordingProxy]:
    with RecordingProxy(_origin(sandbox.cloudflare_url, "/client/v4")) as proxy:
        yield proxy
