"""HPACK (RFC 7541) for the gRPC port: a full decoder, and the few literals the server sends.

The decoder keeps the dynamic table the client's encoder expects and bounds what a header block
may expand to (a few bytes of indexed references could otherwise name a 4 KiB table entry
thousands of times). Huffman-coded strings go through a byte-at-a-time state machine; clients index
what they repeat (``:path``, ``content-type``, ``user-agent``...), so most strings are decoded
once per connection, and short ones are cached across connections.

The encoder never indexes: every answer is ``:status 200`` plus a handful of literals, built once
(:func:`literal`) and concatenated.
"""

from __future__ import annotations

from collections import deque


class HpackError(Exception):
    """The header block cannot be decoded: a connection error (COMPRESSION_ERROR)."""


# RFC 7541 Appendix A.
STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (':authority', ''),
    (':method', 'GET'),
    (':method', 'POST'),
    (':path', '/'),
    (':path', '/index.html'),
    (':scheme', 'http'),
    (':scheme', 'https'),
    (':status', '200'),
    (':status', '204'),
    (':status', '206'),
    (':status', '304'),
    (':status', '400'),
    (':status', '404'),
    (':status', '500'),
    ('accept-charset', ''),
    ('accept-encoding', 'gzip, deflate'),
    ('accept-language', ''),
    ('accept-ranges', ''),
    ('accept', ''),
    ('access-control-allow-origin', ''),
    ('age', ''),
    ('allow', ''),
    ('authorization', ''),
    ('cache-control', ''),
    ('content-disposition', ''),
    ('content-encoding', ''),
    ('content-language', ''),
    ('content-length', ''),
    ('content-location', ''),
    ('content-range', ''),
    ('content-type', ''),
    ('cookie', ''),
    ('date', ''),
    ('etag', ''),
    ('expect', ''),
    ('expires', ''),
    ('from', ''),
    ('host', ''),
    ('if-match', ''),
    ('if-modified-since', ''),
    ('if-none-match', ''),
    ('if-range', ''),
    ('if-unmodified-since', ''),
    ('last-modified', ''),
    ('link', ''),
    ('location', ''),
    ('max-forwards', ''),
    ('proxy-authenticate', ''),
    ('proxy-authorization', ''),
    ('range', ''),
    ('referer', ''),
    ('refresh', ''),
    ('retry-after', ''),
    ('server', ''),
    ('set-cookie', ''),
    ('strict-transport-security', ''),
    ('transfer-encoding', ''),
    ('user-agent', ''),
    ('vary', ''),
    ('via', ''),
    ('www-authenticate', ''),
)
_STATIC_COUNT = len(STATIC_TABLE)
# Each name's first index in the static table: what literal() refers to instead of spelling it.
_STATIC_NAMES: dict[str, int] = {}
for _index, (_name, _) in enumerate(STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_name, _index)
# RFC 7541 Appendix B: the code of each symbol (256 is EOS) and its length in bits.
_HUFFMAN_CODES = (
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed, 0xfffffee,
    0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4, 0xffffff5, 0xffffff6,
    0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15,
    0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18, 0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b,
    0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f,
    0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
    0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4,
    0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9,
    0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2,
    0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc,
    0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1,
    0x7fffe2, 0x7fffe3, 0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
    0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2,
    0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5,
    0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8,
    0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
    0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2, 0x1fffe4,
    0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5, 0xfffec, 0xfffff3,
    0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3, 0x3fffea, 0x3fffeb, 0x1ffffee,
    0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed,
    0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee,
    0x7ffffef, 0x7fffff0, 0x3ffffee, 0x3fffffff,
)
_HUFFMAN_LENGTHS = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6,
    6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5,
    5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23,
    24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20, 22, 22, 23, 23,
    21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21,
    21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27,
    26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
)
_CACHE_MAX = 4096      # Huffman-decoded strings kept, across connections
_CACHE_MAX_LEN = 256   # longer strings are decoded each time (they are rarely repeated)
_huffman_cache: dict[bytes, str] = {}
_fsm: list[tuple[int, bytes]] = []  # built on first use: see _build_fsm
_accepting: list[bool] = []


def _build_fsm() -> None:
    """A byte-at-a-time decoder: for each state (a node of the code tree: the bits of a code read
    so far) and input byte, the next state and the symbols that byte completes (0 to 2: the
    shortest code has 5 bits). 256 states x 256 bytes, built in ~0.2 s the first time a Huffman
    string arrives. Bit by bit cost ~10 us for a 36-character value such as the ``x-request-id``
    Envoy adds to every request, a value never seen twice, so never cached."""
    children: list[list[int]] = [[-1, -1]]          # node -> [child for 0, child for 1]
    leaf: dict[int, int] = {}                        # node -> symbol
    for symbol, (code, length) in enumerate(zip(_HUFFMAN_CODES, _HUFFMAN_LENGTHS)):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if children[node][bit] < 0:
                children[node][bit] = len(children)
                children.append([-1, -1])
            node = children[node][bit]
        leaf[node] = symbol
    states = [node for node in range(len(children)) if node not in leaf]
    index = {node: i for i, node in enumerate(states)}
    # A state may end the string when it was reached from the root by 7 or fewer 1 bits (padding).
    padding, node = {0}, 0
    for _ in range(7):
        node = children[node][1]
        padding.add(node)
    table: list[tuple[int, bytes]] = []
    for node in states:
        for byte in range(256):
            current, out = node, bytearray()
            for shift in range(7, -1, -1):
                current = children[current][(byte >> shift) & 1]
                symbol = leaf.get(current)
                if symbol is not None:
                    if symbol == 256:
                        current = -1
                        break
                    out.append(symbol)
                    current = 0
            table.append((index[current] if current >= 0 else -1, bytes(out)))
    _accepting.extend(node in padding for node in states)
    _fsm.extend(table)


def huffman_decode(data: bytes) -> str:
    cached = _huffman_cache.get(data)
    if cached is not None:
        return cached
    if not _fsm:
        _build_fsm()
    table, state, out = _fsm, 0, []
    for byte in data:
        state, symbols = table[state << 8 | byte]
        if state < 0:
            raise HpackError("EOS in a Huffman string")
        if symbols:
            out.append(symbols)
    if not _accepting[state]:
        raise HpackError("invalid Huffman padding")
    text = b"".join(out).decode("latin-1")
    if len(data) <= _CACHE_MAX_LEN:
        if len(_huffman_cache) >= _CACHE_MAX:
            _huffman_cache.clear()
        _huffman_cache[data] = text
    return text


def _integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """The integer whose first byte is ``data[pos]`` with an N-bit prefix, and the next position."""
    mask = (1 << prefix_bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HpackError("truncated integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 28:
            raise HpackError("integer too large")


def _string(data: bytes, pos: int) -> tuple[str, int]:
    huffman = data[pos] & 0x80
    length, pos = _integer(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HpackError("truncated string")
    raw = data[pos:end]
    return (huffman_decode(raw) if huffman else raw.decode("latin-1")), end


class Decoder:
    """One connection's HPACK decoding context (the dynamic table is per connection)."""

    def __init__(self, max_table_size: int = 4096, max_header_list: int = 65536) -> None:
        self.max_table_size = max_table_size  # what our SETTINGS allow the encoder
        self.table_size = max_table_size      # the size the encoder chose (<= the above)
        self.max_header_list = max_header_list
        self.entries: deque[tuple[str, str]] = deque()
        self.size = 0
        # The last block and its headers, kept while the table is unchanged since: a client (or
        # Envoy upstream) that indexed its headers on the first call sends the same bytes for
        # every later one, which then cost one comparison instead of ~10-20 us of decoding.
        self.last_block = b""
        self.last_headers: list[tuple[str, str]] = []

    def _add(self, name: str, value: str) -> None:
        size = 32 + len(name) + len(value)
        self.entries.appendleft((name, value))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.size > self.table_size and self.entries:
            name, value = self.entries.pop()
            self.size -= 32 + len(name) + len(value)

    def _indexed(self, index: int) -> tuple[str, str]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        index -= len(STATIC_TABLE) + 1
        if 0 <= index < len(self.entries):
            return self.entries[index]
        raise HpackError(f"header index {index + len(STATIC_TABLE) + 1} out of range")

    def decode(self, data: bytes) -> list[tuple[str, str]]:
        """A whole header block (HEADERS plus CONTINUATIONs) as (name, value) pairs, in order.

        Raises :class:`HpackError` when the block is malformed or its headers add up to more than
        ``max_header_list`` (counted as SETTINGS_MAX_HEADER_LIST_SIZE is: 32 + name + value).
        """
        if data == self.last_block and data:
            return list(self.last_headers)
        self.last_block = b""   # until this block has decoded whole (a bad one may leave the table changed)
        headers: list[tuple[str, str]] = []
        total, pos, end = 0, 0, len(data)
        changed = False
        while pos < end:
            byte = data[pos]
            if byte & 0x80:                       # indexed header field
                index = byte & 0x7F
                if index < 0x7F:
                    pos += 1
                else:
                    index, pos = _integer(data, pos, 7)
                name, value = STATIC_TABLE[index - 1] if 0 < index <= _STATIC_COUNT else self._indexed(index)
            elif byte & 0xE0 == 0x20:             # dynamic table size update
                size, pos = _integer(data, pos, 5)
                if size > self.max_table_size:
                    raise HpackError(f"table size {size} over {self.max_table_size}")
                self.table_size = size
                self._evict()
                changed = True
                continue
            else:                                 # literal: incremental indexing, without, never
                indexing = byte & 0xC0 == 0x40
                index, pos = _integer(data, pos, 6 if indexing else 4)
                if index:
                    name = self._indexed(index)[0]
                else:
                    name, pos = _string(data, pos)
                value, pos = _string(data, pos)
                if indexing:
                    self._add(name, value)
                    changed = True
            total += 32 + len(name) + len(value)
            if total > self.max_header_list:
                raise HpackError(f"header list larger than {self.max_header_list} bytes")
            headers.append((name, value))
        # A block that changed the table decodes differently next time, even to the same bytes.
        self.last_block, self.last_headers = (b"", []) if changed else (bytes(data), headers)
        return list(headers)


def _encode_integer(value: int, prefix_bits: int, flags: int) -> bytes:
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes((flags | value,))
    out = bytearray((flags | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: str, value: str | bytes) -> bytes:
    """``name: value`` as a literal never added to the table (no Huffman coding)."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    static = _STATIC_NAMES.get(name, 0)
    head = _encode_integer(static, 4, 0x00) if static else b"\x00" + _encode_integer(len(name), 7, 0) + name.encode()
    return head + _encode_integer(len(raw), 7, 0) + raw


def indexed(name: str, value: str) -> bytes:
    """A header of the static table, by its index."""
    return _encode_integer(STATIC_TABLE.index((name, value)) + 1, 7, 0x80)
