"""Which Ray cluster a run uses (docs/clusters.md), and a one-line error when the cluster it
names cannot be joined.

The rule: the first of `--ray-address` (or the job key `ray_address`, which the option overrides)
and `RAY_ADDRESS` names a cluster to join (`HOST:PORT`, or `auto`: the cluster `ray start` left
running on this node). Without either (or with `local`), the run starts a private local Ray of its
own, whatever else runs on the node: Ray's own `ray.init()` would join the cluster `ray start`
left there (/tmp/ray/ray_current_cluster) and then refuse the resources the run declares.

Joining: Ray 2.60 rewrites a loopback host (127.0.0.1, localhost) to the node's own address before
connecting, and reports any failure to connect, a refused authentication token included, as
"Failed to connect to Ray cluster at NODE-IP:PORT" after about 20 s of retries. A host that does
not answer is found here in seconds instead (a TCP connection first), and a refusal is told apart
by the error Ray chains under it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import ray

from pipeline.errors import UserError

# How long a named cluster's host may take to accept a TCP connection before the run gives up.
CONNECT_TIMEOUT_S = 5.0


class ClusterUnavailable(UserError):
    """The cluster a run names cannot be reached, or refused this driver (exit 2)."""


@dataclass(frozen=True)
class ClusterChoice:
    address: str | None  # None: a private local Ray for this run
    named_by: str  # where the address came from, for messages ("" for the default)

    @property
    def private(self) -> bool:
        return self.address is None


def choose(configured: str | None, environ=os.environ) -> ClusterChoice:
    """configured: --ray-address, or the job key ray_address when the option is not given."""
    if configured:
        address, named_by = configured.strip(), "--ray-address / ray_address"
    elif environ.get("RAY_ADDRESS", "").strip():
        address, named_by = environ["RAY_ADDRESS"].strip(), "RAY_ADDRESS"
    else:
        return ClusterChoice(None, "")
    return ClusterChoice(None if address == "local" else address, named_by)


def join(choice: ClusterChoice, **init_options) -> None:
    """ray.init on the named cluster; ClusterUnavailable with one line when that fails."""
    check_reachable(choice)
    # Ray reads RAY_ADDRESS in place of `auto`; an `auto` the run was given wins over it here.
    hidden = os.environ.pop("RAY_ADDRESS", None) if choice.address == "auto" else None
    try:
        ray.init(address=choice.address, **init_options)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as exc:
        ray.shutdown()  # whatever ray.init set up before it failed
        raise ClusterUnavailable(failure_text(choice, exc)) from None
    finally:
        if hidden is not None:
            os.environ["RAY_ADDRESS"] = hidden


def check_reachable(choice: ClusterChoice) -> None:
    host, port = host_and_port(choice)
    if host is None:
        return  # `auto`, a ray:// client address: Ray finds or reaches it itself
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterUnavailable(f"cannot reach the Ray cluster at {choice.address} (named by {choice.named_by}): "
                                 f"{reason}. Is Ray running there (`ray start --head --port=PORT`)?") from None


def host_and_port(choice: ClusterChoice) -> tuple[str | None, int | None]:
    """HOST:PORT or [IPv6]:PORT; (None, None) for `auto` and ray:// client addresses."""
    if choice.address == "auto" or "://" in choice.address:
        return None, None
    host, _, port = choice.address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ClusterUnavailable(f"the Ray address {choice.address!r} (named by {choice.named_by}) is not HOST:PORT, "
                                 "auto or local")
    return host, int(port)


def failure_text(choice: ClusterChoice, exc: BaseException) -> str:
    where = f"the Ray cluster at {choice.address} (named by {choice.named_by})"
    if _refused_authentication(exc):
        if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            return (f"{where} requires token authentication: set RAY_AUTH_MODE=token and the cluster's token in "
                    f"{TOKEN_PLACES} (`ray get-auth-token` on its head prints it)")
        source = token_source()
        if source is None:
            return f"{where}: RAY_AUTH_MODE=token, but this driver has no token: put the cluster's in {TOKEN_PLACES}"
        return f"{where} refused this driver's authentication token ({source}): it is not the cluster's"
    return f"cannot join {where}: {type(exc).__name__}: {_first_line(exc)}"


# Where Ray 2.60 reads a driver's token, in its order.
TOKEN_PLACES = "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


def token_source() -> str | None:
    """Where Ray reads this process's token from; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"RAY_AUTH_TOKEN_PATH={os.environ['RAY_AUTH_TOKEN_PATH']}"
    path = Path.home() / ".ray" / "auth_token"
    return str(path) if path.exists() else None


def describe(choice: ClusterChoice) -> str:
    """For the start line, once Ray is up: which cluster this run uses."""
    if choice.private:
        return "a private local cluster for this run"
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return (f"the cluster at {ray.get_runtime_context().gcs_address} (named by {choice.named_by}), "
            f"{nodes} node{'s' * (nodes != 1)}")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _refused_authentication(exc: BaseException) -> bool:
    # Ray raises AuthenticationError itself when token mode has no token; a refused token comes
    # back as ConnectionError <- RuntimeError whose text holds the AuthenticationError's traceback.
    return any(isinstance(e, ray.exceptions.AuthenticationError) or "AuthenticationError" in str(e)
               for e in _chain(exc))


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(exc).__name__
