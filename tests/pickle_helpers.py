"""Building hostile pickles for the restricted loaders' tests: calls by reference, a global that
records being called, peak Python memory, and Hypothesis opcode streams."""
import struct
import tracemalloc

from hypothesis import strategies as st

CALLS = []


def record(*args):
    """A global a hostile pickle names: calling it is what a loader must never do."""
    CALLS.append(args)
    return args


class Call:
    """Pickles as ``fn(*args)`` (and ``BUILD`` with ``state`` when given)."""

    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def peak_bytes(fn, *args):
    """``(fn's result or the exception it raised, peak Python allocation during the call)``."""
    tracemalloc.start()
    try:
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001  the caller asserts on it
            result = e
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _text(s: bytes) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s


def opcode_streams(globals_, texts, snippets, max_ops=40):
    """Pickles (protocol 2 header, STOP at the end) of up to ``max_ops`` pieces: opcodes with
    valid or random arguments, the ``globals_`` (``b"module\\nname"``), strings from ``texts``,
    whole calls from ``snippets``, sizes that would allocate gigabytes, and raw noise."""
    piece = st.one_of(
        st.sampled_from(snippets),
        st.sampled_from([b"(", b"t", b"\x85", b"\x86", b"\x87", b")", b"]", b"}", b"\x8f", b"N", b"\x88", b"\x89",
                         b"a", b"e", b"s", b"u", b"R", b"b", b"Q", b"\x81", b"0", b"2", b"l", b"d", b"\x94"]),
        st.integers(0, 255).map(lambda i: b"K" + bytes([i])),
        st.sampled_from([1 << 20, 1 << 28, 2 ** 31 - 1, -1]).map(lambda i: b"J" + struct.pack("<i", i)),
        st.integers(0, 7).map(lambda i: b"q" + bytes([i])),
        st.integers(0, 7).map(lambda i: b"h" + bytes([i])),
        st.sampled_from(texts).map(_text),
        st.text(max_size=6).map(lambda s: _text(s.encode())),
        st.sampled_from(globals_).map(lambda g: b"c" + g + b"\n"),
        st.binary(max_size=4),
    )
    return st.lists(piece, max_size=max_ops).map(lambda pieces: b"\x80\x02" + b"".join(pieces) + b".")
