"""The protobuf contracts: shape rules, freshness of generated code, buf lint."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor

from runwire.bridge.v1 import bridge_pb2
from runwire.execution.v1 import execution_pb2
from runwire.registry.v1 import registry_pb2

ROOT = Path(__file__).resolve().parents[2]
SERVICE_FILES: tuple[FileDescriptor, ...] = (
    execution_pb2.DESCRIPTOR,
    bridge_pb2.DESCRIPTOR,
    registry_pb2.DESCRIPTOR,
)
EXPECTED_METHODS = {
    "runwire.execution.v1.ExecutionService": {
        "StartRun",
        "CancelRun",
        "ListAgents",
        "RespondRun",
        "StartRuns",
    },
    "runwire.bridge.v1.BridgeService": {"Publish", "Subscribe", "Fabric", "PublishStream"},
    "runwire.registry.v1.RegistryService": {
        "CreateRun",
        "TransitionRun",
        "Heartbeat",
        "GetRun",
        "ListRuns",
        "RequestInput",
        "AnswerInput",
        "GetInput",
        "AppendMessages",
        "ListThreads",
        "GetThread",
        "DeleteThread",
        "WriteRuns",
    },
}


def _request_messages() -> list[Descriptor]:
    requests: list[Descriptor] = []
    for file in SERVICE_FILES:
        for service in file.services_by_name.values():
            requests.extend(method.input_type for method in service.methods)
    return requests


def test_services_expose_exactly_the_methods_of_the_brief() -> None:
    found = {
        service.full_name: {m.name for m in service.methods}
        for file in SERVICE_FILES
        for service in file.services_by_name.values()
    }
    assert found == EXPECTED_METHODS


def test_subscribe_is_a_server_stream_with_an_after_cursor() -> None:
    method = bridge_pb2.DESCRIPTOR.services_by_name["BridgeService"].methods_by_name["Subscribe"]
    assert method.server_streaming and not method.client_streaming
    assert (
        method.input_type.fields_by_name["after"].type
        == method.input_type.fields_by_name["after"].TYPE_STRING
    )


@pytest.mark.parametrize("message", _request_messages(), ids=lambda m: m.full_name)
def test_every_request_message_has_user_context_as_field_1(message: Descriptor) -> None:
    field = message.fields_by_number.get(1)
    assert field is not None, f"{message.full_name} has no field 1"
    assert field.name == "user_context"
    assert field.message_type is not None
    assert field.message_type.full_name == "runwire.common.v1.UserContext"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = sorted(p.relative_to(tmp_path) for p in (tmp_path / "runwire").rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(ROOT)
        for p in (ROOT / "runwire").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh == committed, "generated files differ from the committed set; run `make protos`"
    stale = [str(rel) for rel in fresh if not filecmp.cmp(tmp_path / rel, ROOT / rel, shallow=False)]
    assert not stale, f"stale generated code (run `make protos`): {stale}"


def _buf() -> str:
    local = ROOT / "node_modules" / ".bin" / "buf"
    if local.exists():
        return str(local)
    found = shutil.which("buf")
    if found is None:
        pytest.fail("buf is not installed; `make test` installs it from package-lock.json")
    return found


def test_buf_lint_is_clean() -> None:
    result = subprocess.run([_buf(), "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_contracts_are_backward_compatible_with_the_last_release() -> None:
    released = ROOT / "contracts" / "released.binpb"
    assert released.exists(), "contracts/released.binpb (the last released contract) is missing"
    result = subprocess.run(
        [_buf(), "breaking", "--against", str(released)],
        cwd=ROOT / "protos",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
