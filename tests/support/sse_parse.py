"""Incremental parsers for an event stream body: HTTP chunked decoding, then SSE frames.

Both are fed whatever bytes or text arrived, split anywhere, and return what is complete.
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


class ChunkedDecoder:
    """Incremental decoder for ``Transfer-Encoding: chunked``."""

    def __init__(self) -> None:
        self._buffer = b""
        self._remaining = 0  # bytes of chunk data still to come
        self._state = "size"  # size | data | data_crlf | trailers | done

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while True:
            if self._state == "size":
                line, sep, rest = self._buffer.partition(b"\r\n")
                if not sep:
                    break
                self._buffer = rest
                self._remaining = int(line.split(b";", 1)[0].strip(), 16)
                self._state = "data" if self._remaining else "trailers"
            elif self._state == "data":
                if not self._buffer:
                    break
                piece = self._buffer[: self._remaining]
                self._buffer = self._buffer[len(piece) :]
                self._remaining -= len(piece)
                out += piece
                if self._remaining == 0:
                    self._state = "data_crlf"
            elif self._state == "data_crlf":
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise ValueError(f"bad chunk terminator {self._buffer[:2]!r}")
                self._buffer = self._buffer[2:]
                self._state = "size"
            elif self._state == "trailers":
                line, sep, rest = self._buffer.partition(b"\r\n")
                if not sep:
                    break
                self._buffer = rest
                if not line:
                    self._state = "done"
            else:
                break
        return bytes(out)


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
