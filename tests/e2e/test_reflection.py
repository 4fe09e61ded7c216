"""Server reflection under ``runwire up``: a tool that knows no contract can list and call services.

The tests use the grpcio-reflection client the way grpcurl does: list the
services, fetch their descriptors from the server, build the messages from
those descriptors alone and make a call.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from runwire_cli.main import main
from runwire_common.ids import new_id
from tests.e2e.conftest import System

pytestmark = pytest.mark.e2e

SERVICES = {
    "registry": "runwire.registry.v1.RegistryService",
    "bridge": "runwire.bridge.v1.BridgeService",
    "execution": "runwire.execution.v1.ExecutionService",
}
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@pytest.mark.parametrize("kind", sorted(SERVICES))
def test_each_grpc_service_lists_itself_health_and_reflection(system: System, kind: str) -> None:
    with grpc.insecure_channel(system.address(kind)) as channel:
        listed = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert listed == {SERVICES[kind], HEALTH, reflection.SERVICE_NAME}


def test_a_call_built_from_reflected_descriptors_and_a_minted_context_is_answered(
    system: System, attestation_key_spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # What grpcurl does: the request as JSON (the context printed by `runwire context mint`),
    # turned into a message with descriptors fetched from the server.
    with pytest.raises(SystemExit):
        main(["context", "mint", "--user", new_id("user"), "--ttl", "60", "--keys", attestation_key_spec])
    request_json = f'{{"user_context": {capsys.readouterr().out}}}'
    with grpc.insecure_channel(system.address("execution")) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        method = pool.FindServiceByName(SERVICES["execution"]).methods_by_name["ListAgents"]
        request_class = GetMessageClass(method.input_type)
        reply_class = GetMessageClass(method.output_type)
        call = channel.unary_unary(
            f"/{SERVICES['execution']}/ListAgents",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = call(json_format.Parse(request_json, request_class()), timeout=5)
    agents = {agent.name: agent for agent in reply.agents}
    assert {"scripted", "assistant"} <= set(agents)
    assert isinstance(json.loads(agents["assistant"].tools[0].parameters_schema_json), dict)
