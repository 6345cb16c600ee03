"""The gateway's JSON API (docs/gateway.md): which request under /api/v1 carries each of tq-host's operations.

One table for both ends: tq-gateway serves each route with its handler (gateway/api.py, gateway/live.py), and the
remote client (remote.py) makes a call as the route's request.
"""

from __future__ import annotations

from typing import NamedTuple

API = "/api/v1"

# The start of the gateway's 503 (unavailable) message when it cannot reach tq-host: the remote client names the
# gateway's URL in it (the socket path that follows is on the gateway's machine, not the client's).
HOST_UNREACHABLE = "tq-gateway cannot reach its tq-host"
OLD_HOST_UNREACHABLE = "tq-host is not reachable"  # (what gateways before this said)


class Route(NamedTuple):
    """One op's request: `{name}` in the path is the call's field of that name; the other fields go in the query
    (GET, DELETE) or in a JSON body (POST)."""

    method: str
    path: str

    def names(self) -> list[str]:
        """The fields the path carries."""
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


# Each op's routes, the first whose path fields the call has (cancel and retry: by id, or by filters).
ROUTES: dict[str, tuple[Route, ...]] = {
    "submit": (Route("POST", "/jobs"),),
    "get": (Route("GET", "/jobs/{id}"),),
    "list": (Route("GET", "/jobs"),),
    "wait": (Route("POST", "/wait"),),
    "cancel": (Route("POST", "/jobs/{id}/cancel"), Route("POST", "/jobs/cancel")),
    "retry": (Route("POST", "/jobs/{id}/retry"), Route("POST", "/jobs/retry")),
    "queues": (Route("GET", "/queues"),),
    "pause": (Route("POST", "/queues/{queue}/pause"),),
    "resume": (Route("POST", "/queues/{queue}/resume"),),
    "workers": (Route("GET", "/workers"),),
    "forget_worker": (Route("DELETE", "/workers/{instance}"),),
    "schedules": (Route("GET", "/schedules"),),
    "status": (Route("GET", "/status"),),
    "metrics": (Route("GET", "/metrics"),),
    "events": (Route("GET", "/events"),),
    "ping": (Route("GET", "/ping"),),
    "whoami": (Route("GET", "/whoami"),),  # (the caller: its token, user and what it may do)
    "token_list": (Route("GET", "/tokens"),),
    "token_create": (Route("POST", "/tokens"),),
    "token_revoke": (Route("DELETE", "/tokens/{name}"),),
}
