"""The standard gRPC health service (``grpc.health.v1.Health/Check``), without its package.

``grpcio-health-checking`` is not a dependency, so the two messages of the standard
``health.proto`` are built here at run time in a private descriptor pool; on the wire this
is the standard service, so any health client (``grpc_health_probe``, the official stubs)
can ask. Only ``Check`` is served (``Watch`` answers UNIMPLEMENTED). The empty service name
and ``pinfer.v1.Party`` report SERVING while the server runs and NOT_SERVING once it is
shutting down; any other name answers NOT_FOUND, as the standard asks.
"""

from __future__ import annotations

import threading

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "grpc.health.v1.Health"
CHECK = f"/{SERVICE}/Check"
PARTY = "pinfer.v1.Party"
STATUS_NAMES = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")


def _message_classes():
    f = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="pinfer/health.proto",
                                             package="grpc.health.v1", syntax="proto3")
    req = fdp.message_type.add(name="HealthCheckRequest")
    req.field.add(name="service", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    resp = fdp.message_type.add(name="HealthCheckResponse")
    enum = resp.enum_type.add(name="ServingStatus")
    for number, name in enumerate(STATUS_NAMES):
        enum.value.add(name=name, number=number)
    resp.field.add(name="status", number=1, type=f.TYPE_ENUM, label=f.LABEL_OPTIONAL,
                   type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return tuple(message_factory.GetMessageClass(pool.FindMessageTypeByName(
        f"grpc.health.v1.{name}")) for name in ("HealthCheckRequest", "HealthCheckResponse"))


HealthCheckRequest, HealthCheckResponse = _message_classes()


class Health:
    """Serving status of this process, by service name."""

    def __init__(self, services=("", PARTY)):
        self._lock = threading.Lock()
        self._status = {name: 1 for name in services}

    def set_serving(self, serving: bool) -> None:
        with self._lock:
            for name in self._status:
                self._status[name] = 1 if serving else 2

    def check(self, request, context):
        with self._lock:
            status = self._status.get(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return HealthCheckResponse(status=status)

    def add_to(self, server: grpc.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            self.check, request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Check": handler}),))


def check(channel: grpc.Channel, service: str = "", timeout: float = 5.0) -> str:
    """Ask a server's health service; returns the status name ("SERVING", ...)."""
    call = channel.unary_unary(CHECK, request_serializer=HealthCheckRequest.SerializeToString,
                               response_deserializer=HealthCheckResponse.FromString)
    reply = call(HealthCheckRequest(service=service), timeout=timeout)
    return STATUS_NAMES[reply.status] if 0 <= reply.status < len(STATUS_NAMES) else "UNKNOWN"
