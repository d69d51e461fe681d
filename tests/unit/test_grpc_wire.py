"""The gRPC port's wire pieces without a server: HPACK, status texts, limits."""

from __future__ import annotations

import pytest

from modelserver import hpack
from modelserver.grpc_server import GrpcOptions, grpc_limits
from modelserver.grpc_transport import percent_encode

# RFC 7541 Appendix C.4: three requests with Huffman coding, one connection's decoder.
RFC_C4 = [
    ("828684418cf1e3c2e5f23a6ba0ab90f4ff",
     [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")]),
    ("828684be5886a8eb10649cbf",
     [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com"),
      ("cache-control", "no-cache")]),
    ("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
     [(":method", "GET"), (":scheme", "https"), (":path", "/index.html"), (":authority", "www.example.com"),
      ("custom-key", "custom-value")]),
]


def test_hpack_decodes_rfc_7541_examples_with_its_dynamic_table() -> None:
    decoder = hpack.Decoder()
    for block, headers in RFC_C4:
        assert decoder.decode(bytes.fromhex(block)) == headers
    assert decoder.size == 164  # C.4.3's table: 3 entries, 164 octets


def test_hpack_repeated_blocks_follow_the_dynamic_table() -> None:
    decoder = hpack.Decoder()
    insert = bytes.fromhex("400a637573746f6d2d6b65790d637573746f6d2d686561646572")  # RFC 7541 C.2.1
    assert decoder.decode(insert) == [("custom-key", "custom-header")]
    assert decoder.decode(insert) == [("custom-key", "custom-header")]
    assert decoder.size == 2 * 55            # the same bytes inserted twice: not a cached answer
    newest = bytes.fromhex("be")             # dynamic index 62: the newest entry
    assert decoder.decode(newest) == decoder.decode(newest) == [("custom-key", "custom-header")]
    decoder.decode(bytes.fromhex("4001610162"))   # a: b inserted, now index 62
    assert decoder.decode(newest) == [("a", "b")]


@pytest.mark.parametrize("block", [
    "ff",                       # an index past both tables
    "41" + "8c" + "f1e3c2e5f23a6ba0ab90f4" + "00",   # Huffman padding that is not all ones
    "3fe21f",                   # a table size update over our SETTINGS_HEADER_TABLE_SIZE
    "0f10" + "05" + "616263",   # a string running past the block
])
def test_hpack_refuses_malformed_blocks(block: str) -> None:
    with pytest.raises(hpack.HpackError):
        hpack.Decoder().decode(bytes.fromhex(block))


def test_hpack_bounds_what_a_block_expands_to() -> None:
    entry = b"\x40" + hpack.literal("x", "a" * 3000)[1:]   # added to the table, then referenced
    decoder = hpack.Decoder(max_header_list=16 * 1024)
    with pytest.raises(hpack.HpackError, match="header list larger"):
        decoder.decode(entry + b"\xbe" * 10)


def test_literals_the_server_sends_decode_back() -> None:
    block = hpack.indexed(":status", "200") + hpack.literal("content-type", "application/grpc") + \
        hpack.literal("grpc-message", "x" * 300)
    assert hpack.Decoder().decode(block) == [(":status", "200"), ("content-type", "application/grpc"),
                                             ("grpc-message", "x" * 300)]


def test_grpc_message_is_percent_encoded() -> None:
    assert percent_encode("plain text: ok") == b"plain text: ok"
    assert percent_encode("100% \u00e9\n") == b"100%25 %C3%A9%0A"


def test_channel_arguments_set_the_transport_limits() -> None:
    limits = grpc_limits(GrpcOptions(channel_arguments="grpc.max_receive_message_length=1024,"
                                      "grpc.max_concurrent_streams=7,grpc.max_connection_idle_ms=2500,"
                                      "grpc.primary_user_agent=x,grpc.max_send_message_length=-1"))
    assert (limits.max_receive, limits.max_streams, limits.idle_timeout) == (1024, 7, 2.5)
    assert limits.max_send == 2 ** 31 - 1
    with pytest.raises(ValueError):
        grpc_limits(GrpcOptions(channel_arguments="novalue"))
