"""The ``runwire`` command: tokens, attested contexts, and a whole ``up`` session."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from google.protobuf import json_format

from runwire.common.v1 import context_pb2
from runwire_cli import devsecrets
from runwire_cli.main import main
from runwire_common.attestation import ContextAttestor, generate_key_spec
from runwire_common.context import validate_context


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
def test_runwire_up_serves_a_chat_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWIRE_")}
    env["RUNWIRE_DATA_DIR"] = str(tmp_path)
    env["PYTHONUNBUFFERED"] = "1"
    up = subprocess.Popen(
        [sys.executable, "-m", "runwire_cli", "up", "--gateway-port", "0", "--grace-period", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert up.stdout is not None
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.fullmatch(r"(ws://127\.0\.0\.1:\d+/ws)\n", line)
            url = match.group(1) if match else None
        assert url, "".join(lines)
        chat = subprocess.run(
            [sys.executable, "-m", "runwire_cli", "chat", "--user", "alice", "what is 6 * 7?"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert chat.returncode == 0, chat.stdout + chat.stderr
        assert "agent_completed" in chat.stdout and "42" in chat.stdout.splitlines()[-1]
        runs = subprocess.run(
            [sys.executable, "-m", "runwire_cli", "runs", "--user", "alice"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert runs.returncode == 0 and "completed" in runs.stdout, runs.stdout + runs.stderr
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=60)
        assert up.returncode == 0, "".join(lines) + rest
        assert "stopped." in rest
        assert json.loads((tmp_path / devsecrets.SECRETS_FILE).read_text())["jwt_secret"]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
