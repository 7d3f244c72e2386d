"""`--ray-address`: is a Ray cluster's head there? Checked in seconds, before a scenario is
loaded or a run directory made (Ray itself would retry for about 30 s, then fail inside the
run). Light: imports Ray's gRPC stubs only, not Flower or the model."""

from __future__ import annotations

import socket

from fedtune.config import ScenarioError
from fedtune.errors import cut, first_line, short

RAY_CHECK_SECONDS = 5.0
"""How long the TCP connect and the GCS call may each take."""


def check_ray_cluster(address: str) -> None:
    """Fail, in one line, unless a Ray cluster's GCS answers at `address` (HOST:PORT, or
    `auto`: the cluster `ray start` left on this machine): something must accept a TCP
    connection there within RAY_CHECK_SECONDS, and answer Ray's first call of a driver
    (NodeInfoGcsService.GetClusterId) as a GCS does."""
    where = f"--ray-address {cut(address, 100)}"
    target = _bootstrap_address(address, where)
    if target != address:
        where += f" ({target})"
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), RAY_CHECK_SECONDS).close()
    except (OSError, UnicodeError) as exc:  # UnicodeError: not a host name (idna)
        reason = getattr(exc, "strerror", None) or first_line(exc)
        raise ScenarioError(f"{where}: no Ray cluster answers there ({reason})") from None
    refusal = _gcs_refusal(target)
    if refusal:
        raise ScenarioError(
            f"{where}: something answers there, but not a Ray cluster's head ({refusal}); "
            "give the GCS port of `ray start --head --port`"
        )


def _bootstrap_address(address: str, where: str) -> str:
    """HOST:PORT of the cluster's GCS (`auto` found as Ray finds it)."""
    if address == "auto":
        from ray._private import services

        try:
            return services.canonicalize_bootstrap_address_or_die(address)
        except (ConnectionError, ValueError) as exc:
            raise ScenarioError(f"{where}: {first_line(exc)}") from None
    host, _, port = address.rpartition(":")
    if not host or "://" in host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ScenarioError(f"--ray-address {short(address)}: give HOST:PORT or auto")
    return address


def _gcs_refusal(target: str) -> str | None:
    """None when a GCS answers Ray's GetClusterId at `target`; else the gRPC status it got
    (UNIMPLEMENTED: another gRPC or HTTP/2 server; DEADLINE_EXCEEDED: no answer in time)."""
    from ray._private.grpc_utils import init_grpc_channel  # TLS and token auth as Ray's own
    from ray.core.generated.gcs_service_pb2 import GetClusterIdRequest
    from ray.core.generated.gcs_service_pb2_grpc import NodeInfoGcsServiceStub

    channel = init_grpc_channel(target)
    try:
        NodeInfoGcsServiceStub(channel).GetClusterId(
            GetClusterIdRequest(), timeout=RAY_CHECK_SECONDS
        )
    except Exception as exc:  # noqa: BLE001 - a grpc.RpcError; its status names the refusal
        code = getattr(exc, "code", None)
        return code().name if callable(code) else first_line(exc)
    finally:
        channel.close()
    return None
