"""The bus: NOTIFY inside write transactions, one LISTEN per worker, in-process fan-out.

Nothing outside this package imports past this module.
"""

from app.realtime.hub import Hub, Subscription
from app.realtime.listener import Listener, ListenerUnusable
from app.realtime.stream import DISCONNECT_EXTENSION, DisconnectNotice, write_stream
from app.realtime.wireformat import (
    ACTIVITY,
    CHANNEL,
    COUNTER,
    PING,
    PRESENCE,
    RESYNC,
    Event,
    PayloadError,
    encode_frame,
    notify,
)
from app.realtime.writer import TransitionError, WriterState

__all__ = [
    "ACTIVITY",
    "CHANNEL",
    "COUNTER",
    "DISCONNECT_EXTENSION",
    "PING",
    "PRESENCE",
    "RESYNC",
    "DisconnectNotice",
    "Event",
    "Hub",
    "Listener",
    "ListenerUnusable",
    "PayloadError",
    "Subscription",
    "TransitionError",
    "WriterState",
    "encode_frame",
    "notify",
    "write_stream",
]
