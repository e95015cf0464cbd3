"""The incremental SSE parser of an event stream body (already de-chunked, by h11).

It is fed whatever text arrived, split anywhere, and returns the events that are complete.
Ours, not a library's: `httpx-sse` drops comments (tests read the pings), dispatches frames
without data, and splits lines on every Unicode line break where the spec names CR, LF, CRLF.
"""

import codecs
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None  # the ``id:`` field of this frame, None when it had none
    retry: int | None = None  # the ``retry:`` field of this frame
    received_at: float = field(default=0.0, compare=False)


class FrameParser:
    """Incremental SSE parser (the "event stream interpretation" of the HTML standard)."""

    def __init__(self) -> None:
        self._pending = ""
        self._first = True
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self.last_event_id = ""
        self.retry: int | None = None  # the latest ``retry:`` seen, dispatched or not
        self.comments: list[str] = []

    def feed(self, text: str) -> list[SSEEvent]:
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        self._pending += text
        events: list[SSEEvent] = []
        while True:
            cut = _line_end(self._pending)
            if cut is None:
                break
            end, skip = cut
            line = self._pending[:end]
            self._pending = self._pending[end + skip :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
            self.retry = self._retry
        return None

    def _dispatch(self) -> SSEEvent | None:
        event = SSEEvent(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self._id,
            retry=self._retry,
            received_at=time.monotonic(),
        )
        has_data = bool(self._data)
        self._event, self._data, self._id, self._retry = "", [], None, None
        return event if has_data else None


def _line_end(text: str) -> tuple[int, int] | None:
    """Position and length of the first line ending (CRLF, LF or CR) in ``text``.

    A CR at the very end may be the first half of a CRLF still in flight, so wait for more.
    """
    for i, char in enumerate(text):
        if char == "\n":
            return i, 1
        if char == "\r":
            if i + 1 == len(text):
                return None
            return (i, 2) if text[i + 1] == "\n" else (i, 1)
    return None


class Utf8Decoder:
    """UTF-8 decoding that keeps a multi-byte character split across reads."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, data: bytes) -> str:
        return self._decoder.decode(data)
