"""The embedded Ray keeps token authentication on: its servers listen on every interface, so the token guards them."""

from __future__ import annotations

import logging
import socket

import pytest


def outward_address() -> str:
    """An IPv4 address of this machine other than loopback (127.0.0.1 if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent; picks the outward interface
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


@pytest.mark.slow
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


@pytest.fixture
def fake_ray_init(monkeypatch):
    """connect() with ray.init replaced: records its arguments and the auth mode it would see."""
    from rnnimp import distributed

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(distributed.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.ray, "init", lambda **kwargs: calls.append(
        {**kwargs, "auth_mode": __import__("os").environ.get("RAY_AUTH_MODE")}))
    monkeypatch.setattr(distributed.ray, "cluster_resources", lambda: {"CPU": 2.0})
    return distributed, calls


def test_connect_leaves_rays_default_token_mode_and_drops_only_its_notice(fake_ray_init, monkeypatch, caplog):
    distributed, calls = fake_ray_init
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("RNNIMP_VERBOSE", "")
    distributed.connect(num_cpus=2)
    assert calls[0]["auth_mode"] is None  # unset: Ray 2.60 then turns token authentication on
    assert calls[0]["_node_ip_address"] == "127.0.0.1" and calls[0]["include_dashboard"] is False
    assert calls[0]["logging_level"] == logging.WARNING
    notice = logging.getLogger(distributed._AUTH_SETUP_LOGGER)
    with caplog.at_level(logging.WARNING, logger=distributed._AUTH_SETUP_LOGGER):
        notice.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled ...")
        notice.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    assert [r.getMessage()[:40] for r in caplog.records] == ["Token authentication is disabled for thi"]


def test_connect_warns_when_the_user_turns_token_authentication_off(fake_ray_init, monkeypatch, caplog):
    distributed, calls = fake_ray_init
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with caplog.at_level(logging.WARNING, logger="rnnimp"):
        distributed.connect(num_cpus=2)
    assert calls[0]["auth_mode"] == "disabled"  # the user's choice wins
    assert any("Ray token authentication is off (RAY_AUTH_MODE=disabled)" in r.getMessage() for r in caplog.records)


def test_an_embedded_ray_that_cannot_start_is_one_line(fake_ray_init, monkeypatch):
    from rnnimp.errors import WorkersLostError

    distributed, _ = fake_ray_init

    def overloaded(**kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the "
                        "raylet failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(distributed.ray, "init", overloaded)
    with pytest.raises(WorkersLostError, match="^the embedded Ray could not start: The current node timed out"):
        distributed.connect(num_cpus=2)
