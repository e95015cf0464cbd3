"""/healthz and /metrics: about the whole instance, whichever worker answers."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response, get
from sqlalchemy.exc import SQLAlchemyError

from app import metrics
from app.web.common import runtime
from app.web.errors import NotFound, PublicError
from app.web.security import Kind, kind_headers


class Unauthorized(PublicError):
    status_code = 401


# The contract: /healthz answers within 2 s. A database that does not answer within this
# is reported unreachable (a partition, or so overloaded that it should get no traffic).
HEALTH_READ_WAIT = 1.5


@get("/healthz", cache_control=None)
async def healthz(request: Request[Any, Any, Any]) -> Response[Any]:
    """Ready when the database answers and every worker of this instance is listening.

    A readiness check, not a liveness one: a database outage answers 503 here but must
    not make a platform restart the instance (workers recover by themselves). It names
    no host: it is public.
    """
    rt = runtime(request)
    settings = rt.settings
    headers = kind_headers(Kind.PROBE)
    fresh_within = max(3 * settings.heartbeat_seconds, 2.0)
    try:
        health = await rt.registry.instance_health_within(fresh_within, HEALTH_READ_WAIT)
    except (OSError, SQLAlchemyError) as exc:
        return Response(
            {
                "status": "unavailable",
                "database": "unreachable",
                "error": type(exc).__name__,
                "listener": "connected" if rt.listener.connected else "disconnected",
            },
            status_code=503,
            headers={**headers, "retry-after": "2"},
        )
    listening = (
        rt.listener.connected
        and health.workers >= settings.web_concurrency
        and health.listeners_connected >= health.workers
    )
    body = {
        "status": "ok" if listening else "unavailable",
        "database": "ok",
        "listener": "connected" if listening else "disconnected",
        "workers": health.workers,
        "workers_expected": settings.web_concurrency,
        "listeners_connected": health.listeners_connected,
    }
    if not listening:
        headers["retry-after"] = "2"
    return Response(body, status_code=200 if listening else 503, headers=headers)


@get("/metrics")
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[Any]:
    """Prometheus text. With METRICS_TOKEN set it needs `Authorization: Bearer <token>`;
    in production without a token it does not exist (404)."""
    settings = runtime(request).settings
    token = settings.metrics_token
    if token:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {token}"
        if not (given.isascii() and hmac.compare_digest(given.encode(), expected.encode())):
            raise Unauthorized(
                "Send the metrics token as: Authorization: Bearer <METRICS_TOKEN>.",
                headers={"www-authenticate": 'Bearer realm="metrics"'},
            )
    elif settings.production:
        raise NotFound()
    body, content_type = metrics.render()
    return Response(content=body, media_type=content_type, headers=kind_headers(Kind.PROBE))
