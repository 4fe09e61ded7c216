"""Service code must not define state shared between requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.architecture.shared_state import scan_source, scan_tree

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = (
    "runwire_common",
    "registry_service",
    "bridge_service",
    "execution_service",
    "gateway",
    "runwire_cli",
    "runwire_client",
    "bench",
)


def test_service_code_defines_no_module_level_mutable_state() -> None:
    findings = scan_tree(ROOT, SERVICE_PACKAGES)
    assert not findings, "shared mutable state found:\n" + "\n".join(map(str, findings))


def test_every_service_package_is_scanned() -> None:
    for package in SERVICE_PACKAGES:
        assert list((ROOT / package).rglob("*.py")), f"{package} has no modules to scan"


@pytest.mark.parametrize(
    "source",
    [
        "CONNECTIONS = {}",
        "users: dict[str, int] = dict()",
        "SUBSCRIBERS = []",
        "SEEN = set()",
        "from collections import defaultdict\nBY_USER = defaultdict(list)",
        "class Manager:\n    _instance = None",
        "class Bridge:\n    subscribers = {}",
        "def get_instance():\n    return 1",
        "import functools\n@functools.lru_cache\ndef settings():\n    return 1",
        "COUNT = 0\ndef bump():\n    global COUNT\n    COUNT += 1",
        "import asyncio\nLOCK = asyncio.Lock()",
        "try:\n    REGISTRY = {}\nexcept ImportError:\n    pass",
        "class Registry:\n    pass\nREGISTRY = Registry()",
        "COUNTER = 0\nCOUNTER += 1",
    ],
)
def test_scanner_flags_shared_state(source: str) -> None:
    assert scan_source(source), f"the scanner missed shared state in:\n{source}"


@pytest.mark.parametrize(
    "source",
    [
        "import logging\nlog = logging.getLogger(__name__)",
        "LIMIT = 3\nNAMES = ('a', 'b')\nSTATES = frozenset({'x'})",
        "from types import MappingProxyType\nM = MappingProxyType({'a': 1})",
        "from typing import TypeVar\nT = TypeVar('T')",
        "class Settings:\n    model_config = {'env_prefix': 'X_'}",
        "Alias = dict[str, int]",
    ],
)
def test_scanner_accepts_immutable_module_constants(source: str) -> None:
    assert scan_source(source) == []
