"""Start Runwire's services as separate processes on this machine.

Used by ``runwire up`` and by the end-to-end tests. Services start in
dependency order (registry and bridge, then execution, then gateways); each
writes a ready file with its bound port once it reports SERVING, and the
launcher confirms with a real health check before starting the next tier.
Stopping goes in reverse order with SIGTERM, so every service drains.

This module starts and stops; keeping processes up once started (restarts,
backoff, giving up) is :mod:`runwire_cli.supervisor`'s concern.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from runwire_cli.health import probe
from runwire_common.tls import TlsConfig

# The registry publishes death notices to the bridge, so the bridge comes first.
TIERS = (("bridge",), ("registry",), ("execution",), ("gateway",))
MODULES: Mapping[str, str] = MappingProxyType(
    {
        "registry": "registry_service",
        "bridge": "bridge_service",
        "execution": "execution_service",
        "gateway": "gateway",
    }
)


class LaunchError(RuntimeError):
    """A service did not come up; the message says which and where its log is."""


@dataclass
class ServiceProcess:
    """One running service process."""

    kind: str
    index: int
    env: dict[str, str]
    log_path: Path
    ready_path: Path
    popen: subprocess.Popen[bytes] | None = None
    port: int = 0
    started_at: float = 0.0  # unix time of the current process's start
    _terminated: bool = False
    _tls: TlsConfig | None = None  # what the process serves, for the health checks

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        self._terminated = False
        self._tls = TlsConfig.from_environment(self.env)
        self.started_at = time.time()
        self.ready_path.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", MODULES[self.kind]],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Its own session: Ctrl-C in the terminal reaches only the launcher, which
            # then stops the services in order. No preexec_fn: the launcher may run
            # threads (gRPC, tests), and a fork with threads can deadlock in it.
            start_new_session=True,
        )
        log.close()

    def respawn(self) -> None:
        """Start again after an exit, pinned to the port it had, so its peers reconnect to it."""
        if self.port:
            prefix = f"RUNWIRE_{self.kind.upper()}_"
            self.env[f"{prefix}WS_PORT" if self.kind == "gateway" else f"{prefix}PORT"] = str(self.port)
        self.start()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The exit code once the process has ended (negative: the signal that ended it)."""
        return None if self.popen is None else self.popen.poll()

    def ready(self) -> bool:
        """Has it written its ready file, and does it answer its health check with SERVING?"""
        if not self.ready_path.exists():
            return False
        self.port = int(json.loads(self.ready_path.read_text())["port"])
        return probe(self.kind, self.address, tls=self._tls) == "SERVING"

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise LaunchError(
                    f"{self.name} exited during start-up; see {self.log_path}:\n{self.log_tail()}"
                )
            if self.ready():
                return
            time.sleep(0.05)
        raise LaunchError(f"{self.name} did not report SERVING within {timeout_s:.0f}s; see {self.log_path}")

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM, once: a drain is never interrupted by a repeated signal from here."""
        if not self._terminated:
            self._terminated = True
            self.signal(signal.SIGTERM)

    def wait(self, timeout_s: float) -> int | None:
        if self.popen is None:
            return None
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, wait for the drain, SIGKILL if it overruns; return the exit code."""
        self.terminate()
        code = self.wait(timeout_s)
        if code is None and self.alive():
            self.signal(signal.SIGKILL)
            code = self.wait(5)
        return code

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ClusterConfig:
    """What to launch and how; every field has a sensible local default."""

    data_dir: Path
    attestation_keys: str
    jwt_secret: str
    replicas: int = 1
    gateway_port: int = 8080
    database_url: str | None = None
    redis_url: str | None = None
    grace_period_s: float = 10.0
    extra_env: Mapping[str, str] = field(default_factory=dict)
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


class Cluster:
    """The four services as processes; start in tiers, stop in reverse."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.processes: dict[str, list[ServiceProcess]] = {kind: [] for kind in MODULES}

    def _targets(self, kind: str) -> str:
        addresses = [p.address for p in self.processes[kind]]
        return "ipv4:" + ",".join(addresses) if len(addresses) > 1 else addresses[0]

    def _database_url(self) -> str:
        if self.config.database_url:
            return self.config.database_url
        return f"sqlite+aiosqlite:///{self.config.data_dir / 'registry.db'}"

    def _env(self, kind: str, index: int) -> dict[str, str]:
        prefix = f"RUNWIRE_{kind.upper()}_"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
        env.update(
            {
                "RUNWIRE_ATTESTATION_KEYS": self.config.attestation_keys,
                # A development system: known development secrets are accepted (see runwire_common.settings).
                "RUNWIRE_DEV_MODE": "true",
                "PYTHONUNBUFFERED": "1",
                f"{prefix}READY_FILE": str(self.config.data_dir / "run" / f"{kind}-{index}.json"),
                f"{prefix}GRACE_PERIOD_S": str(self.config.grace_period_s),
            }
        )
        if kind != "gateway":  # development: grpcurl-style tools can list and call the services
            env[f"{prefix}REFLECTION"] = "true"
        if kind == "registry":
            env[f"{prefix}DATABASE_URL"] = self._database_url()
            env[f"{prefix}BRIDGE_TARGET"] = self._targets("bridge")
        elif kind == "bridge":
            if self.config.redis_url:
                env[f"{prefix}BACKEND"] = "redis"
                env[f"{prefix}REDIS_URL"] = self.config.redis_url
        elif kind == "execution":
            env[f"{prefix}REGISTRY_TARGET"] = self._targets("registry")
            env[f"{prefix}BRIDGE_TARGET"] = self._targets("bridge")
            env[f"{prefix}EXECUTOR_ID"] = f"executor-{index}-{os.getpid()}"
            # The llm agent's settings (OPENAI_* pass through with the rest of the environment).
            env.update({k: v for k, v in os.environ.items() if k.startswith("RUNWIRE_LLM_")})
        elif kind == "gateway":
            env[f"{prefix}EXECUTION_TARGET"] = self._targets("execution")
            env[f"{prefix}REGISTRY_TARGET"] = self._targets("registry")
            env[f"{prefix}BRIDGE_TARGET"] = self._targets("bridge")
            env[f"{prefix}JWT_SECRET"] = self.config.jwt_secret
            env[f"{prefix}DEV_TOKENS"] = "true"  # generated development secrets: the console's sign-in
            if self.config.redis_url:  # the per-user limits, shared by the gateway replicas
                env[f"{prefix}REDIS_URL"] = self.config.redis_url
            port = self.config.gateway_port
            env[f"{prefix}WS_PORT"] = str(port + index if port else 0)
        env.update(self.config.extra_env)
        env.update(self.config.service_env.get(kind, {}))
        return env

    def launch_tier(self, tier: Sequence[str]) -> list[ServiceProcess]:
        """Start every replica of the tier's services without waiting for them.

        The tiers before it must be serving: their addresses go into the new
        processes' settings.
        """
        started: list[ServiceProcess] = []
        for kind in tier:
            for index in range(self.config.replicas):
                proc = ServiceProcess(
                    kind=kind,
                    index=index,
                    env={},
                    log_path=self.config.data_dir / "logs" / f"{kind}-{index}.log",
                    ready_path=self.config.data_dir / "run" / f"{kind}-{index}.json",
                )
                self.processes[kind].append(proc)
                proc.env = self._env(kind, index)
                proc.start()
                started.append(proc)
        return started

    def start(self, *, timeout_s: float = 60.0) -> None:
        """Start every tier and wait until each process reports SERVING (no restarts)."""
        try:
            for tier in TIERS:
                for proc in self.launch_tier(tier):
                    proc.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def restart(self, proc: ServiceProcess, *, timeout_s: float = 60.0) -> None:
        """Start a stopped or killed process again on the same port, so peers reconnect."""
        if proc.alive():
            raise LaunchError(f"{proc.name} is still running")
        proc.respawn()
        proc.wait_ready(timeout_s)

    def gateway_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{p.port}/ws" for p in self.processes["gateway"]]

    def console_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p.port}/" for p in self.processes["gateway"]]

    def all(self) -> Sequence[ServiceProcess]:
        return [p for tier in TIERS for kind in tier for p in self.processes[kind]]

    def stop(self) -> dict[str, int | None]:
        """SIGTERM tier by tier (gateways first); return each process's exit code."""
        codes: dict[str, int | None] = {}
        for tier in reversed(TIERS):
            procs = [p for kind in tier for p in self.processes[kind] if p.popen is not None]
            for proc in procs:
                proc.terminate()
            for proc in procs:
                codes[proc.name] = proc.stop(self.config.grace_period_s + 5)
        return codes
