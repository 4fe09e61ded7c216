"""Server reflection under ``runwire up``: a tool that knows no contract can list and call services.

The tests use the grpcio-reflection client the way grpcurl does: list the
services, fetch their descriptors from the server, build the messages from
those descriptors alone and make a call.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from runwire.common.v1 import context_pb2
from runwire.execution.v1 import execution_pb2
from runwire_common.attestation import ContextAttestor
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


def test_a_call_built_from_reflected_descriptors_alone_is_answered(
    system: System, attestor: ContextAttestor
) -> None:
    with grpc.insecure_channel(system.address("execution")) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName(SERVICES["execution"])
        method = service.methods_by_name["ListAgents"]
        request_class = GetMessageClass(method.input_type)
        reply_class = GetMessageClass(method.output_type)
        # grpcurl would take the context as JSON; here it is copied over the wire format.
        ctx = attestor.mint(context_pb2.UserContext(user_id=new_id("user")), ttl_s=60)
        typed = execution_pb2.ListAgentsRequest(user_context=ctx)
        request = request_class.FromString(typed.SerializeToString())
        call = channel.unary_unary(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=reply_class.FromString,
        )
        reply = call(request, timeout=5)
    agents = {agent.name: agent for agent in reply.agents}
    assert {"scripted", "assistant"} <= set(agents)
    assert isinstance(json.loads(agents["assistant"].tools[0].parameters_schema_json), dict)
