"""Server-generated ids: the prefix, 32 hex digits of randomness, never a placeholder."""

from __future__ import annotations

import re

from runwire_common.context import id_problem
from runwire_common.ids import new_id


def test_an_id_is_its_prefix_and_32_hex_digits() -> None:
    assert re.fullmatch(r"run_[0-9a-f]{32}", new_id("run"))


def test_ids_are_distinct_and_pass_context_validation() -> None:
    ids = {new_id("thread") for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(id_problem(value) is None for value in ids)
