"""Which Ray cluster a run uses, and how a failure to join one is told (run/ray_address.py); the
real `ray start` cluster is in tests/reliability/test_ray_start.py."""

import socket

import pytest
import ray

from pipeline.run.ray_address import ClusterChoice, ClusterUnavailable, check_reachable, choose, failure_text


def test_the_option_or_job_key_then_ray_address_name_the_cluster_else_a_private_one():
    assert choose(None, {}) == ClusterChoice(None, "")
    assert choose(None, {"RAY_ADDRESS": " "}) == ClusterChoice(None, "")
    assert choose(None, {"RAY_ADDRESS": "10.0.0.5:6379"}) == ClusterChoice("10.0.0.5:6379", "RAY_ADDRESS")
    assert choose("head:6380", {"RAY_ADDRESS": "10.0.0.5:6379"}) == \
        ClusterChoice("head:6380", "--ray-address / ray_address")
    assert choose("auto", {}).address == "auto"
    # local: the private Ray, even where RAY_ADDRESS names a cluster.
    assert choose("local", {"RAY_ADDRESS": "10.0.0.5:6379"}).private
    assert choose(None, {"RAY_ADDRESS": "local"}).private


def test_an_address_that_is_not_host_and_port_or_does_not_answer_is_one_line():
    with pytest.raises(ClusterUnavailable, match=r"^the Ray address 'head' \(named by RAY_ADDRESS\) is not HOST:PORT"):
        check_reachable(ClusterChoice("head", "RAY_ADDRESS"))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ClusterUnavailable, match=rf"^cannot reach the Ray cluster at 127.0.0.1:{port} \(named by "
                                                 r"RAY_ADDRESS\): Connection refused\."):
        check_reachable(ClusterChoice(f"127.0.0.1:{port}", "RAY_ADDRESS"))
    check_reachable(ClusterChoice("auto", "--ray-address / ray_address"))  # Ray looks for that one itself


def refused(reason: str) -> ConnectionError:
    """As Ray 2.60 reports a refused connection: ConnectionError <- RuntimeError holding the traceback."""
    try:
        try:
            raise RuntimeError(f"Failed to connect to GCS. Last connection error: Traceback ...\n{reason}\n")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 192.0.2.2:6390") from inner
    except ConnectionError as outer:
        return outer


def test_a_refused_token_is_told_apart_from_other_failures(monkeypatch, tmp_path):
    choice = ClusterChoice("127.0.0.1:6390", "RAY_ADDRESS")
    token_refused = refused("ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: Authentication "
                            "token is missing or incorrect.")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert failure_text(choice, token_refused).startswith(
        "the Ray cluster at 127.0.0.1:6390 (named by RAY_ADDRESS) requires token authentication: "
        "set RAY_AUTH_MODE=token")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc")
    assert failure_text(choice, token_refused) == ("the Ray cluster at 127.0.0.1:6390 (named by RAY_ADDRESS) refused "
                                                   "this driver's authentication token (RAY_AUTH_TOKEN): it is not "
                                                   "the cluster's")
    # Token mode without any token: Ray raises this before it connects.
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert failure_text(choice, ray.exceptions.AuthenticationError("no token found")) == (
        "the Ray cluster at 127.0.0.1:6390 (named by RAY_ADDRESS): RAY_AUTH_MODE=token, but this driver has no token: "
        "put the cluster's in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")
    assert failure_text(choice, refused("grpc: unavailable")) == (
        "cannot join the Ray cluster at 127.0.0.1:6390 (named by RAY_ADDRESS): ConnectionError: Failed to connect "
        "to Ray cluster at 192.0.2.2:6390")
