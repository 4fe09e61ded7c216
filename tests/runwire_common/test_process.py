"""run_service: the garbage collector a service process runs with."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from runwire_common.process import GC_OLDER_THRESHOLD, GC_YOUNG_THRESHOLD

SERVICE = textwrap.dedent(
    """
    import gc, json
    from runwire_common.process import run_service

    async def main(settings):
        print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count()}))

    run_service("probe", dict, main)
    """
)


def test_a_service_runs_with_its_start_up_heap_frozen_and_rarer_collections() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SERVICE], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["threshold"] == [GC_YOUNG_THRESHOLD, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD]
    # Everything imported before main (pydantic, logging, uvloop …) is out of the collector's sight.
    assert seen["frozen"] > 10_000
    assert GC_YOUNG_THRESHOLD > 700  # CPython's default, which profiles showed to be far too eager
