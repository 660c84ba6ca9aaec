"""Shared helpers for the XML tests: every parser test runs whole, byte by byte, and with trailing bytes."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import pytest

from meshxmpp.xml import StreamError, XmlEvent, XmlStream, stream_header

HEADER = stream_header(from_=None, to="example.org", id=None)
CLOSE = b"</stream:stream>"


def feed_chunks(stream: XmlStream, chunks: Iterable[bytes]) -> list[XmlEvent]:
    """Feed every chunk, then ``feed(b"")`` so an error found after some events surfaces too."""
    events: list[XmlEvent] = []
    for chunk in chunks:
        events += stream.feed(chunk)
    events += stream.feed(b"")
    return events


def bytewise(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def tr(
    data: bytes,
    expected: list[XmlEvent],
    *,
    rest: bytes = b"",
    trailing: bytes = b" <iq type='get",
    **kwargs: object,
) -> None:
    """Check ``data`` yields ``expected`` fed whole, byte by byte, and followed by ``trailing``
    (which must come back from ``restart()``, after ``rest``: the bytes of ``data`` after its last event)."""
    s = XmlStream(**kwargs)  # type: ignore[arg-type]
    assert feed_chunks(s, [data]) == expected
    assert s.restart() == rest

    s = XmlStream(**kwargs)  # type: ignore[arg-type]
    assert feed_chunks(s, bytewise(data)) == expected
    assert s.restart() == rest

    s = XmlStream(**kwargs)  # type: ignore[arg-type]
    assert feed_chunks(s, [data + trailing]) == expected
    assert s.restart() == rest + trailing


def tr_error(
    data: bytes, condition: str, *, trailing: bytes = b"<message/>", max_cpu: float = 1.0, **kwargs: object
) -> None:
    """``data`` must end the stream with ``condition`` fed whole, byte by byte and with trailing
    bytes, each within ``max_cpu`` seconds of CPU; afterwards the parser stays dead."""
    for how, chunks in (("whole", [data]), ("bytewise", bytewise(data)), ("trailing", [data + trailing])):
        s = XmlStream(**kwargs)  # type: ignore[arg-type]
        t0 = time.process_time()
        with pytest.raises(StreamError) as info:
            feed_chunks(s, chunks)
        elapsed = time.process_time() - t0
        assert info.value.condition == condition, (how, info.value)
        assert elapsed < max_cpu, f"{how}: {elapsed:.3f}s CPU"
        with pytest.raises(StreamError) as again:
            s.feed(b"<presence/>")
        assert again.value is info.value
        with pytest.raises(StreamError):
            s.restart()
