"""Sampling profiles of service processes under load, with py-spy.

``py-spy record --format raw`` attaches to a running service by pid (no code
change, no restart) and writes collapsed stacks; :func:`summarise` turns them
into a short text report: where CPU time is spent *itself* (the innermost
frame of each sample), where it is spent *inclusively* (any frame on the
stack), and per library (the package of the innermost frame). Percentages
are of all busy samples of the process: with ``--native`` the samples whose
innermost frame is a wait (``epoll_wait``, futex waits …) are counted as idle
and left out, as py-spy itself does for Python-only stacks.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

REPO_ROOT = str(Path(__file__).resolve().parents[1]) + "/"
# Innermost native frames that mean "waiting", not working: such samples are idle.
IDLE_NATIVE = frozenset(
    {
        "epoll_wait",
        "epoll_pwait",
        "poll",
        "ppoll",
        "select",
        "pselect6",
        "nanosleep",
        "clock_nanosleep",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "sem_wait",
        "sem_timedwait",
        "futex_wait",
        "__futex_abstimed_wait_common",
        "do_futex_wait",
        "__lll_lock_wait",
        "accept4",
        "recvmsg_wait",
        "sigtimedwait",
    }
)
# Blocking calls: a sample whose stack ends in one of these, followed only by unnamed
# C frames, is a thread waiting (on a lock, a queue, a timer), not working.
IDLE_CALLERS = frozenset(
    {
        "PyThread_acquire_lock_timed",
        "_queue_SimpleQueue_get_impl",
        "time_sleep",
        "pysleep",
        "select_epoll_poll_impl",
        "uv__io_poll",
    }
)
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    """The py-spy executable of this environment, if installed."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


class Recorder:
    """py-spy processes recording the given pids until :meth:`stop`."""

    def __init__(
        self, pids: Mapping[str, int], out_dir: Path, *, rate: int = 100, native: bool = False
    ) -> None:
        self._out = out_dir
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self.raw: dict[str, Path] = {}
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            raw = out_dir / f"{name}.collapsed"
            self.raw[name] = raw
            command = [exe, "record", "-p", str(pid), "-r", str(rate), "-f", "raw", "-o", str(raw)]
            # --native must pause the process to unwind C stacks; otherwise sample without pausing.
            command += ["--full-filenames", "--native" if native else "--nonblocking"]
            self._procs[name] = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

    def stop(self) -> dict[str, str]:
        """Stop recording (py-spy writes its file on SIGINT); return error text per failed name."""
        failures: dict[str, str] = {}
        for proc in self._procs.values():
            proc.send_signal(signal.SIGINT)
        for name, proc in self._procs.items():
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            if not self.raw[name].exists():
                failures[name] = err.decode(errors="replace")[-500:]
        return failures


def _frames(stack: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for part in stack.split(";"):
        match = FRAME.match(part.strip())
        if match and match["func"].startswith("0x"):
            out.append(("<native>", match["file"]))  # a C frame without symbols: keep its library
        elif match:
            out.append((match["func"], match["file"]))
        else:
            out.append((part.strip(), ""))
    return out


def _waiting(frames: list[tuple[str, str]]) -> bool:
    """True when the innermost named frame is a blocking call and only unnamed C frames follow."""
    for func, _ in reversed(frames):
        if func != "<native>":
            return func in IDLE_CALLERS or func in IDLE_NATIVE
    return False


def _package(path: str) -> str:
    """A short library name for a source path: site-packages top level, else the repo package."""
    marker = "site-packages/"
    if marker in path:
        return path.split(marker, 1)[1].split("/", 1)[0]
    if ".so" in path:
        return "native:" + Path(path).name.split(".so")[0]
    parts = Path(path).parts
    for known in ("asyncio", "json", "logging", "concurrent", "selectors", "uuid", "datetime"):
        if known in parts or path.endswith(f"/{known}.py"):
            return f"stdlib:{known}"
    if path.startswith(REPO_ROOT) or not path.startswith("/"):
        return parts[-2] if len(parts) > 1 else path
    return "stdlib:" + Path(path).stem


def _short(func: str, path: str) -> str:
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    elif path.startswith(REPO_ROOT):
        path = path[len(REPO_ROOT) :]
    else:
        path = Path(path).name
    return f"{func} ({path})"


def summarise(name: str, lines: Iterable[str], *, top: int = 15) -> tuple[str, dict[str, object]]:
    """A text report of collapsed stacks, and its top entries as data."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = idle = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in _frames(stack) if f[1] or f[0]]
        if not frames:
            continue
        # Drop the process/thread header py-spy puts first.
        frames = [f for f in frames if not f[0].startswith(("process ", "thread "))] or frames
        func, path = frames[-1]
        if func in IDLE_NATIVE or _waiting(frames):
            idle += count
            continue
        total += count
        self_time[_short(func, path)] += count
        packages[_package(path)] += count
        for label in {_short(f, p) for f, p in frames}:
            inclusive[label] += count

    def pct(value: int) -> float:
        return round(100 * value / total, 1) if total else 0.0

    out = [
        f"py-spy profile of {name}: {total} busy samples ({idle} samples waiting in epoll, locks or queues left out)",
        "",
        "Self time (innermost frame):",
    ]
    out += [f"  {pct(c):5.1f}%  {label}" for label, c in self_time.most_common(top)]
    out += ["", "By library (innermost frame's package):"]
    out += [f"  {pct(c):5.1f}%  {label}" for label, c in packages.most_common(top)]
    out += ["", "Inclusive time (on the stack):"]
    out += [f"  {pct(c):5.1f}%  {label}" for label, c in inclusive.most_common(top * 2)]
    data: dict[str, object] = {
        "samples": total,
        "self_top": [[label, pct(c)] for label, c in self_time.most_common(8)],
        "packages_top": [[label, pct(c)] for label, c in packages.most_common(8)],
    }
    return "\n".join(out) + "\n", data
