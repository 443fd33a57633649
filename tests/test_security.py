"""The embedded Ray keeps token authentication on: its servers listen on every interface, so the token guards them."""

from __future__ import annotations

import socket

import pytest

pytestmark = pytest.mark.slow


def outward_address() -> str:
    """An IPv4 address of this machine other than loopback (127.0.0.1 if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outward interface
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def test_embedded_ray_refuses_clients_without_the_token(monkeypatch):
    import grpc
    import ray
    from ray._private.authentication.authentication_constants import AUTHORIZATION_HEADER_NAME
    from ray._private.authentication.authentication_utils import is_token_auth_enabled
    from ray._raylet import AuthenticationTokenLoader
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    from rnnimp import distributed

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default, which rnnimp keeps
    distributed.connect(num_cpus=1)
    try:
        assert is_token_auth_enabled()
        port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
        # The GCS listens on every interface although the node address is 127.0.0.1 ...
        with grpc.insecure_channel(f"{outward_address()}:{port}") as channel:
            stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=20)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as wrong:
                stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=20,
                                  metadata=[(AUTHORIZATION_HEADER_NAME, "Bearer not-the-token")])
            assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # ... and answers a client that has the token: the token is the only guard.
            headers = AuthenticationTokenLoader.instance().get_token_for_http_header()
            reply = stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=20,
                                      metadata=list(headers.items()))
            assert reply.cluster_id
    finally:
        distributed.shutdown()
