"""Keep the processes of ``runwire up`` running, as a kubelet keeps a pod's containers.

A process that exits without being asked to is started again on the same
address, so its peers' channels and the gateway's clients reconnect to it as
they would to a Kubernetes pod restarted behind its Service. Exits are counted
over a sliding window (:class:`RestartPolicy`): the first is restarted at
once, each further one waits twice as long as the one before, up to a cap, and
a process that keeps exiting is given up with a message naming its log. The
system can no longer serve once every replica of some service is given up.

One thread drives everything by polling (:meth:`Supervisor.tick`): it never
blocks on a process, so a stop request is seen within one poll interval, even
while a restart waits out its backoff. Stopping is the caller's decision:
after it, nothing is restarted, because nothing ticks any more.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from runwire_cli.cluster import MODULES, TIERS, Cluster, LaunchError, ServiceProcess
from runwire_cli.state import ClusterState, ServiceRecord, ServiceState


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a process that exited, and when to stop trying.

    With the defaults a process that exits is restarted at once, then after
    0.5 s, 1 s, 2 s and 4 s; its sixth exit within a minute gives it up. A
    process that stays up for a whole window is back to an immediate restart.
    """

    max_restarts: int = 5  # restarts allowed within the window; one exit more gives up
    window_s: float = 60.0
    backoff_s: float = 0.5  # the wait before the second restart within the window
    max_backoff_s: float = 10.0
    start_timeout_s: float = 60.0  # a process not SERVING by then is killed, and counts as an exit

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.window_s <= 0 or self.start_timeout_s <= 0:
            raise ValueError("max_restarts must be >= 0, window and start timeout > 0")
        if not 0 <= self.backoff_s <= self.max_backoff_s:
            raise ValueError("the restart backoff must be between 0 and its maximum")

    def delay_s(self, exits: int) -> float:
        """The wait before restarting after the ``exits``-th exit within the window."""
        if exits <= 1:
            return 0.0
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** (exits - 2))


class Phase(Enum):
    STARTING = "starting"  # first launch, not yet SERVING
    RUNNING = "running"
    WAITING = "waiting"  # exited; restarted once its backoff is over
    RESTARTING = "restarting"  # restarted, not yet SERVING
    GIVEN_UP = "given_up"

    @property
    def state(self) -> ServiceState:
        """The state as ``services.json`` spells it (a wait and a restart are both "restarting")."""
        states: dict[Phase, ServiceState] = {
            Phase.STARTING: "starting",
            Phase.RUNNING: "running",
            Phase.WAITING: "restarting",
            Phase.RESTARTING: "restarting",
            Phase.GIVEN_UP: "given_up",
        }
        return states[self]


@dataclass
class _Watched:
    proc: ServiceProcess
    phase: Phase
    restarts: int = 0
    exits: deque[float] = field(default_factory=deque)  # monotonic times, within the window
    due: float = 0.0  # WAITING: when to restart; STARTING/RESTARTING: when to give up waiting


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts a :class:`Cluster` tier by tier and keeps every process of it running."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        policy: RestartPolicy | None = None,
        report: Callable[[str], None] = _stderr,
        on_change: Callable[[ClusterState], None] = lambda _state: None,
        poll_interval_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.policy = policy or RestartPolicy()
        self._report = report
        self._on_change = on_change
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._started_at = time.time()
        self._watched: list[_Watched] = []

    def start(self, stop_requested: Callable[[], bool]) -> bool:
        """Launch the tiers in order, each once the one before it serves.

        Processes that exit while starting are restarted like any other.
        Returns False if a stop was requested first; raises :class:`LaunchError`
        if a service was given up.
        """
        for tier in TIERS:
            batch = [_Watched(proc, Phase.STARTING) for proc in self.cluster.launch_tier(tier)]
            for watched in batch:
                watched.due = self._clock() + self.policy.start_timeout_s
            self._watched += batch
            self._publish()
            while any(w.phase not in (Phase.RUNNING, Phase.GIVEN_UP) for w in batch):
                if stop_requested():
                    return False
                self.tick()
                self._raise_if_down()
                time.sleep(self._poll_interval_s)
        return True

    def supervise(self, stop_requested: Callable[[], bool]) -> None:
        """Keep every process running until a stop is requested.

        Raises :class:`LaunchError` once the system can no longer serve.
        """
        while not stop_requested():
            self.tick()
            self._raise_if_down()
            time.sleep(self._poll_interval_s)

    def tick(self) -> None:
        """Look at every process once and move it along; publish the state if anything changed."""
        now = self._clock()
        changed = [self._advance(watched, now) for watched in self._watched]
        if any(changed):
            self._publish()

    def stop(self) -> dict[str, int | None]:
        """Drain and stop every process; return those that did not stop cleanly, with their codes.

        A process still starting may be ended by the SIGTERM itself, before it
        could install its handler; that is a clean stop too. Processes that were
        not running (waiting to restart, given up) have nothing to stop.
        """
        live = {w.proc.name: w.phase for w in self._watched if w.proc.alive()}
        codes = self.cluster.stop()
        unclean: dict[str, int | None] = {}
        for name, phase in live.items():
            code = codes.get(name)
            starting = phase in (Phase.STARTING, Phase.RESTARTING)
            if code != 0 and not (starting and code == -signal.SIGTERM):
                unclean[name] = code
        return unclean

    def snapshot(self) -> ClusterState:
        return ClusterState(
            started_at=self._started_at,
            launcher_pid=os.getpid(),
            services=tuple(self._record(w) for w in self._watched),
        )

    def given_up(self) -> Sequence[ServiceProcess]:
        return [w.proc for w in self._watched if w.phase is Phase.GIVEN_UP]

    def _record(self, watched: _Watched) -> ServiceRecord:
        proc = watched.proc
        return ServiceRecord(
            name=proc.name,
            kind=proc.kind,
            replica=proc.index,
            address=proc.address if proc.port else None,
            pid=proc.pid if proc.alive() else None,
            log=str(proc.log_path),
            restarts=watched.restarts,
            started_at=proc.started_at,
            state=watched.phase.state,
        )

    def _publish(self) -> None:
        self._on_change(self.snapshot())

    def _raise_if_down(self) -> None:
        """The system cannot serve once every launched replica of some service is given up."""
        for kind in MODULES:
            replicas = [w for w in self._watched if w.proc.kind == kind]
            if replicas and all(w.phase is Phase.GIVEN_UP for w in replicas):
                logs = ", ".join(str(w.proc.log_path) for w in replicas)
                raise LaunchError(f"no {kind} process is left, so Runwire cannot serve; see {logs}")

    def _advance(self, watched: _Watched, now: float) -> bool:
        """One step of the process's state machine; True when its phase or process changed."""
        proc = watched.proc
        if watched.phase is Phase.GIVEN_UP:
            return False
        if watched.phase is Phase.WAITING:
            if now < watched.due:
                return False
            self._restart(watched, now)
            return True
        if not proc.alive():
            self._exited(watched, now)
            return True
        if watched.phase is Phase.RUNNING:
            return False
        if proc.ready():
            if watched.phase is Phase.RESTARTING:
                self._report(
                    f"{proc.name} is serving again on {proc.address} "
                    f"(pid {proc.pid}, restart {watched.restarts})"
                )
            watched.phase = Phase.RUNNING
            return True
        if now >= watched.due:
            self._report(
                f"{proc.name} did not report SERVING within {self.policy.start_timeout_s:g}s; killing it"
            )
            proc.signal(signal.SIGKILL)
            proc.wait(5)
            self._exited(watched, now)
            return True
        return False

    def _exited(self, watched: _Watched, now: float) -> None:
        proc = watched.proc
        watched.exits.append(now)
        while watched.exits and watched.exits[0] <= now - self.policy.window_s:
            watched.exits.popleft()
        exits = len(watched.exits)
        how = describe_exit(proc.exit_code)
        if exits > self.policy.max_restarts:
            watched.phase = Phase.GIVEN_UP
            tail = proc.log_tail(10)
            self._report(
                f"{proc.name} exited {exits} time(s) within {self.policy.window_s:g}s ({how}); "
                f"giving up on it. See its log: {proc.log_path}" + (f"\n{tail}" if tail else "")
            )
            return
        delay = self.policy.delay_s(exits)
        when = "now" if delay == 0 else f"in {delay:g}s"
        self._report(
            f"{proc.name} exited unexpectedly ({how}); restarting it {when} "
            f"(restart {watched.restarts + 1}); see {proc.log_path}"
        )
        watched.phase = Phase.WAITING
        watched.due = now + delay
        if delay == 0:
            self._restart(watched, now)

    def _restart(self, watched: _Watched, now: float) -> None:
        watched.restarts += 1
        watched.proc.respawn()
        watched.phase = Phase.RESTARTING
        watched.due = now + self.policy.start_timeout_s
