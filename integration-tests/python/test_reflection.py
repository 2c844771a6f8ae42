"""gRPC reflection with a real reflection client (grpcio-reflection), the way grpcurl uses it:
list services, resolve FlightService's descriptors, then call DoAction with messages built
only from what reflection returned."""
import json

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVICE = "arrow.flight.protocol.FlightService"


def test_reflection_lists_and_describes_flight_and_drives_do_action(server):
    channel = grpc.insecure_channel(server.addr)
    db = ProtoReflectionDescriptorDatabase(channel)
    services = db.get_services()
    assert SERVICE in services
    assert "grpc.reflection.v1.ServerReflection" in services or "grpc.reflection.v1alpha.ServerReflection" in services

    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName(SERVICE)
    methods = {m.name for m in service.methods}
    assert methods == {"Handshake", "ListFlights", "GetFlightInfo", "PollFlightInfo", "GetSchema", "DoGet", "DoPut", "DoExchange", "DoAction", "ListActions"}

    do_action = service.methods_by_name["DoAction"]
    Action = message_factory.GetMessageClass(do_action.input_type)
    Result = message_factory.GetMessageClass(do_action.output_type)
    call = channel.unary_stream(
        f"/{SERVICE}/DoAction", request_serializer=Action.SerializeToString, response_deserializer=Result.FromString
    )
    created = list(call(Action(type="create_table", body=json.dumps({"name": "refl", "dim": 2}).encode())))
    assert json.loads(created[0].body)["dim"] == 2
    health = json.loads(list(call(Action(type="health", body=b"{}")))[0].body)
    assert health["status"] == "ok" and health["tables"] == 1

    list_actions = service.methods_by_name["ListActions"]
    Empty = message_factory.GetMessageClass(list_actions.input_type)
    ActionType = message_factory.GetMessageClass(list_actions.output_type)
    names = [a.type for a in channel.unary_stream(f"/{SERVICE}/ListActions", request_serializer=Empty.SerializeToString, response_deserializer=ActionType.FromString)(Empty())]
    assert "search" in names
