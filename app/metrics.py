"""Prometheus metrics, shared by every worker of an instance.

The launcher points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start, so whichever worker is scraped reports the whole instance.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

OPEN_STREAMS = Gauge("ripple_open_streams", "Event streams open now", multiprocess_mode="livesum")
EVENTS_RECEIVED = Counter(
    "ripple_events_received_total", "Notifications received from PostgreSQL", ["kind"]
)
FRAMES_FANNED_OUT = Counter(
    "ripple_frames_fanned_out_total", "Frames handed to open streams", ["kind"]
)
EVENTS_COALESCED = Counter(
    "ripple_events_coalesced_total",
    "State events merged into a newer one (per worker throttle or per slow stream)",
    ["kind"],
)
RESYNCS_SENT = Counter("ripple_resyncs_total", "Resync events queued to streams", ["reason"])
STREAMS_OPENED = Counter("ripple_streams_opened_total", "Event streams accepted")
STREAMS_REFUSED = Counter("ripple_streams_refused_total", "Event streams refused", ["reason"])
SLOW_STREAMS_CLOSED = Counter(
    "ripple_slow_streams_closed_total", "Streams closed after a send timed out"
)
LISTENER_RECONNECTS = Counter(
    "ripple_listener_reconnects_total", "Times a worker re-opened its LISTEN connection"
)
LISTENER_CONNECTED = Gauge(
    "ripple_listener_connected",
    "1 while this worker's LISTEN connection is up",
    multiprocess_mode="livemin",
)
NOTIFY_TO_SEND = Histogram(
    "ripple_notify_to_send_seconds",
    "From a notification's arrival to its frame being written to a stream (sampled)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FRAGMENTS_SERVED = Counter("ripple_fragment_requests_total", "Fragment requests answered", ["kind"])
ITEMS_SERVED = FRAGMENTS_SERVED.labels("activity")  # the label looked up once: the hot path
ITEMS_IN_PROTOCOL = Counter(
    "ripple_item_answers_in_protocol_total",
    "Feed items answered from memory by the HTTP protocol, with no ASGI cycle "
    "(counted in ripple_fragment_requests_total too)",
)
ITEMS_WARMED = Counter(
    "ripple_items_warmed_total",
    "New feed items read and rendered by a worker as their notification arrived",
)
DATABASE_UNAVAILABLE = Counter(
    "ripple_database_unavailable_total",
    "Requests answered 503 because the database could not be reached in time",
)
QUEUE_USAGE = Gauge(
    "ripple_notification_queue_usage",
    "pg_notification_queue_usage(): fraction of PostgreSQL's NOTIFY queue in use",
    multiprocess_mode="mostrecent",
)


def render() -> tuple[bytes, str]:
    """The whole instance's metrics in Prometheus text format."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def forget_this_process() -> None:
    """Drop this process's live gauges (called at worker shutdown)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
