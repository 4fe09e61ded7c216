"""Process statistics read straight from ``/proc`` (no psutil).

* CPU seconds: ``utime + stime`` of ``/proc/<pid>/stat`` (fields 14 and 15) in
  clock ticks, divided by ``SC_CLK_TCK``. Differences between two readings
  give the CPU a process spent during a measurement.
* RSS: ``VmRSS`` of ``/proc/<pid>/status`` — resident memory now.
* Peak RSS: ``VmHWM`` — the high-water mark of resident memory since start.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass


def clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            raw = handle.read()
    except OSError:
        return 0.0
    # The command name (field 2) may contain spaces; fields after ')' are fixed.
    fields = raw.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / clock_ticks()


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def rss_kb(pid: int) -> int:
    """Resident set size now, in KiB."""
    return _status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int:
    """Peak resident set size since the process started (``VmHWM``), in KiB."""
    return _status_kb(pid, "VmHWM")


@dataclass(frozen=True)
class Sample:
    """CPU seconds and RSS of a set of named processes at one moment."""

    cpu_s: Mapping[str, float]
    rss_kb: Mapping[str, int]


def sample(pids: Mapping[str, int]) -> Sample:
    return Sample(
        cpu_s={name: cpu_seconds(pid) for name, pid in pids.items()},
        rss_kb={name: rss_kb(pid) for name, pid in pids.items()},
    )


def cpu_delta(before: Sample, after: Sample) -> dict[str, float]:
    """CPU seconds each process used between two samples."""
    return {name: round(after.cpu_s[name] - before.cpu_s[name], 3) for name in before.cpu_s}


def nofile_limit() -> int:
    """This process's soft ``RLIMIT_NOFILE`` — what the processes it starts inherit."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_nofile_limit(wanted: int = 65536) -> int:
    """Raise this process's ``RLIMIT_NOFILE`` as far as allowed and return the soft limit.

    Children (the services, the baseline, the driver processes) inherit it.
    A privileged process may raise the hard limit too; otherwise the soft limit
    goes up to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    for new_soft, new_hard in ((wanted, max(hard, wanted)), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, new_hard))
        except (ValueError, OSError):
            continue
        return new_soft
    return soft
