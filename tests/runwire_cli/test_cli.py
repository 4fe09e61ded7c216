"""The ``runwire`` command: tokens, attested contexts, and a whole ``up`` session."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from google.protobuf import json_format

from runwire.common.v1 import context_pb2
from runwire_cli import devsecrets, state
from runwire_cli.main import main
from runwire_common.attestation import ContextAttestor, generate_key_spec
from runwire_common.context import validate_context
from tests.runwire_cli.conftest import RunwireUp, assert_all_stopped


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_token_prints_only_a_jwt_signed_with_the_development_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    found = devsecrets.load_or_create(tmp_path, rotate_attestation=True)
    code, out, _ = _run(capsys, "--data-dir", str(tmp_path), "token", "--user", "alice", "--role", "reader")
    assert code == 0
    token = out.strip()
    assert "\n" not in token
    claims = jwt.decode(token, found.jwt_secret, algorithms=["HS256"])
    assert claims["sub"] == "alice" and claims["roles"] == ["reader"] and claims["exp"] > time.time()


def test_token_refuses_a_placeholder_user_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devsecrets.load_or_create(tmp_path, rotate_attestation=True)
    code, out, err = _run(capsys, "--data-dir", str(tmp_path), "token", "--user", "test")
    assert code == 2 and out == "" and "placeholder" in err


def test_token_without_a_launched_system_explains_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--data-dir", str(tmp_path / "empty"), "token", "--user", "alice"])
    assert "runwire up" in str(exited.value.code)


def test_the_jwt_secret_survives_a_relaunch_but_the_attestation_key_does_not(tmp_path: Path) -> None:
    first = devsecrets.load_or_create(tmp_path, rotate_attestation=True)
    second = devsecrets.load_or_create(tmp_path, rotate_attestation=True)
    assert first.jwt_secret == second.jwt_secret
    assert first.attestation_keys != second.attestation_keys
    assert oct((tmp_path / devsecrets.SECRETS_FILE).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("fmt", ["json", "base64"])
def test_context_mint_prints_a_context_the_services_accept(
    capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    spec = generate_key_spec("ops")
    code, out, _ = _run(
        capsys, "context", "mint", "--user", "batch_job_7", "--keys", spec, "--format", fmt, "--ttl", "60"
    )
    assert code == 0
    if fmt == "json":
        ctx = json_format.Parse(out, context_pb2.UserContext())
    else:
        ctx = context_pb2.UserContext.FromString(base64.b64decode(out))
    attestor = ContextAttestor.from_spec(spec)
    assert validate_context(ctx, attestor=attestor).user_id == "batch_job_7"
    ctx.user_id = "someone_else_entirely"
    with pytest.raises(Exception, match="does not match"):
        attestor.verify(ctx)


@pytest.mark.e2e
def test_runwire_up_serves_a_chat_shows_its_status_and_stops_cleanly_on_ctrl_c(
    runwire_up: Callable[..., RunwireUp],
) -> None:
    up = runwire_up()
    url = up.wait_ready()
    records = up.services()
    assert [r.name for r in records.values()] == ["bridge-0", "registry-0", "execution-0", "gateway-0"]
    assert {r.state for r in records.values()} == {
        "running"
    } and url == f"ws://{records['gateway-0'].address}/ws"
    for record in records.values():
        assert f"{record.name:<12} pid {record.pid:<7} {record.address}" in up.output
        assert record.log == str(up.folder / "logs" / f"{record.name}.log") and record.restarts == 0

    status = up.status()
    assert status.returncode == 0, status.stdout + status.stderr
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[2], row[3], row[5], row[6]) for row in rows] == [
        (r.name, "SERVING", str(r.pid), r.address, "0", "running") for r in records.values()
    ]

    def cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runwire_cli", *argv],
            env=up.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    chat = cli("chat", "--user", "alice", "what is 6 * 7?")
    assert chat.returncode == 0, chat.stdout + chat.stderr
    assert "agent_completed" in chat.stdout and "42" in chat.stdout.splitlines()[-1]
    runs = cli("runs", "--user", "alice")
    assert runs.returncode == 0 and "completed" in runs.stdout, runs.stdout + runs.stderr
    thread_id = chat.stdout.split(" accepted on thread ", 1)[1].split()[0]
    again = cli("chat", "--user", "alice", "--thread", thread_id, "echo twice")
    assert again.returncode == 0, again.stdout + again.stderr
    threads = cli("threads", "--user", "alice")
    assert threads.returncode == 0 and thread_id in threads.stdout and "what is 6 * 7?" in threads.stdout
    shown = cli("threads", "--user", "alice", "--thread", thread_id)
    said = [line.split(":", 1)[0].strip() for line in shown.stdout.splitlines()]
    assert said == ["user", "assistant", "user", "assistant"], shown.stdout
    assert "echo twice" in shown.stdout

    # Questions are answered on the terminal; approvals with y/n, or all at once with --yes.
    asking = json.dumps({"steps": [{"ask": "Your name?"}], "result": "ok"})
    answered = cli("chat", "--user", "alice", "--agent", "scripted", "--input", asking, stdin="Ada\n")
    assert answered.returncode == 0, answered.stdout + answered.stderr
    assert "Your name?" in answered.stdout and "'Ada'" in answered.stdout
    approval = json.dumps({"steps": [{"tool": "echo", "args": {"a": 1}, "require_approval": True}]})
    for argv, stdin, status in ((("--yes",), "", "success"), ((), "n\n", "denied")):
        decided = cli(
            "chat", "--user", "alice", "--agent", "scripted", "--input", approval, *argv, stdin=stdin
        )
        assert decided.returncode == 0, decided.stdout + decided.stderr
        assert f"echo → {status}" in decided.stdout
    nobody = cli("chat", "--user", "alice", "--agent", "scripted", "--input", asking)  # stdin closed
    assert nobody.returncode == 1 and "agent_cancelled" in nobody.stdout, nobody.stdout + nobody.stderr

    assert up.interrupt() == 0, up.output
    assert_all_stopped(up)
    assert json.loads((up.folder / devsecrets.SECRETS_FILE).read_text())["jwt_secret"]
    after = up.status()
    assert after.returncode == 1 and "no `runwire up` is running" in after.stderr


def test_status_reports_a_state_file_whose_launcher_is_gone_as_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    state.write(
        tmp_path, state.ClusterState(started_at=time.time(), launcher_pid=int(gone.stdout), services=())
    )
    code, _, err = _run(capsys, "--data-dir", str(tmp_path), "status")
    assert code == 1 and "is gone" in err and "stale" in err


def test_the_llm_agents_settings_reach_the_execution_service_and_only_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "local")
    monkeypatch.setenv("RUNWIRE_LLM_MODEL", "tiny")
    monkeypatch.setenv("RUNWIRE_GATEWAY_JWT_SECRET", "not-passed-through")
    from runwire_cli.cluster import Cluster, ClusterConfig

    cluster = Cluster(ClusterConfig(data_dir=tmp_path, attestation_keys=generate_key_spec(), jwt_secret="s"))
    monkeypatch.setattr(cluster, "_targets", lambda kind: f"127.0.0.1:{len(kind)}")  # nothing launched here
    execution = cluster._env("execution", 0)
    gateway = cluster._env("gateway", 0)
    assert execution["RUNWIRE_LLM_MODEL"] == "tiny" and execution["OPENAI_BASE_URL"].endswith("/v1")
    assert "RUNWIRE_LLM_MODEL" not in gateway
    assert gateway["RUNWIRE_GATEWAY_JWT_SECRET"] == "s"  # the launcher's own, not the caller's


def test_only_the_launchers_gateway_offers_development_sign_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.settings import GatewaySettings
    from runwire_cli.cluster import Cluster, ClusterConfig

    assert GatewaySettings.model_fields["dev_tokens"].default is False  # off unless runwire up says so
    cluster = Cluster(ClusterConfig(data_dir=tmp_path, attestation_keys=generate_key_spec(), jwt_secret="s"))
    monkeypatch.setattr(cluster, "_targets", lambda kind: f"127.0.0.1:{len(kind)}")  # nothing launched here
    assert cluster._env("gateway", 0)["RUNWIRE_GATEWAY_DEV_TOKENS"] == "true"
    for kind in ("registry", "bridge", "execution"):
        assert not any(name.endswith("DEV_TOKENS") for name in cluster._env(kind, 0))


def test_runwire_up_runs_every_service_in_development_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runwire_cli.cluster import Cluster, ClusterConfig

    monkeypatch.setenv("RUNWIRE_DEV_MODE", "false")  # the caller's own environment does not decide
    cluster = Cluster(ClusterConfig(data_dir=tmp_path, attestation_keys=generate_key_spec(), jwt_secret="s"))
    monkeypatch.setattr(cluster, "_targets", lambda kind: f"127.0.0.1:{len(kind)}")  # nothing launched here
    for kind in ("registry", "bridge", "execution", "gateway"):
        assert cluster._env(kind, 0)["RUNWIRE_DEV_MODE"] == "true", kind
