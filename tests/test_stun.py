"""STUN codec: RFC 5769 test vectors (exact bytes), integrity, fingerprint, malformed input."""

import hashlib
import struct

import pytest

from sfu import stun

PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 §2.1 sample request. Padding bytes are spaces in the RFC.
SAMPLE_REQUEST = bytes.fromhex(
    "00010058"  # Binding Request, length 88
    "2112a442"  # magic cookie
    "b7e7a701bc34d686fa87dfae"  # transaction id
    "80220010" "5354554e20746573742063" "6c69656e74"  # SOFTWARE "STUN test client"
    "00240004" "6e0001ff"  # PRIORITY
    "80290008" "932ff9b151263b36"  # ICE-CONTROLLED tie breaker
    "00060009" "6576746a3a68367659202020"  # USERNAME "evtj:h6vY" + 3 pad
    "00080014" "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"  # MESSAGE-INTEGRITY
    "80280004" "e57a3bcf"  # FINGERPRINT
)
# RFC 5769 §2.2: 192.0.2.1:32853, SOFTWARE "test vector".
SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c" "2112a442" "b7e7a701bc34d686fa87dfae"
    "8022000b" "7465737420766563746f7220"  # SOFTWARE + 1 pad
    "00200008" "0001a147" "e112a643"  # XOR-MAPPED-ADDRESS
    "00080014" "2b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004" "c07d4c96"
)
# RFC 5769 §2.3: [2001:db8:1234:5678:11:2233:4455:6677]:32853.
SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "01010048" "2112a442" "b7e7a701bc34d686fa87dfae"
    "8022000b" "7465737420766563746f7220"
    "00200014" "0002a147" "0113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014" "a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004" "c8fb0b4c"
)
# RFC 5769 §2.4 long-term credentials (key = MD5(username:realm:SASLprep(password))).
SAMPLE_LONG_TERM = bytes.fromhex(
    "00010060" "2112a442" "78ad3433c6ad72c029da412e"
    "00060012" "e3839ee38388e383aae38383e382afe382b90000"  # USERNAME (18) + 2 pad
    "0015001c" "662f2f3439396b39353464364f4c33346f4c394653547679" "36347341"  # NONCE
    "0014000b" "6578616d706c652e6f726700"  # REALM "example.org"
    "00080014" "f67024656dd64a3e02b8e0712e85c9a28ca89666"
)


def test_parse_sample_request():
    msg = stun.parse(SAMPLE_REQUEST)
    assert msg.msg_type == stun.BINDING_REQUEST and msg.is_request
    assert msg.transaction_id == TID
    assert msg.username() == "evtj:h6vY"
    assert msg.get(stun.SOFTWARE) == b"STUN test client"
    assert msg.get(stun.PRIORITY) == bytes.fromhex("6e0001ff")
    assert [t for t, _ in msg.attributes] == [stun.SOFTWARE, stun.PRIORITY, stun.ICE_CONTROLLED,
                                              stun.USERNAME, stun.MESSAGE_INTEGRITY,
                                              stun.FINGERPRINT]
    assert stun.verify_integrity(SAMPLE_REQUEST, PASSWORD.encode())
    assert not stun.verify_integrity(SAMPLE_REQUEST, b"wrong password")
    assert stun.verify_fingerprint(SAMPLE_REQUEST)
    assert stun.is_stun(SAMPLE_REQUEST)


def test_encode_reproduces_sample_request_exactly():
    msg = stun.parse(SAMPLE_REQUEST)
    attrs = [(t, v) for t, v in msg.attributes
             if t not in (stun.MESSAGE_INTEGRITY, stun.FINGERPRINT)]
    out = stun.encode(stun.BINDING_REQUEST, TID, attrs, integrity_key=PASSWORD.encode(),
                      padding=b" ")
    assert out == SAMPLE_REQUEST


@pytest.mark.parametrize(("vector", "host"), [
    (SAMPLE_IPV4_RESPONSE, "192.0.2.1"),
    (SAMPLE_IPV6_RESPONSE, "2001:db8:1234:5678:11:2233:4455:6677"),
], ids=["ipv4", "ipv6"])
def test_binding_success_matches_vector(vector, host):
    request = stun.parse(SAMPLE_REQUEST)
    out = stun.binding_success(request, host, 32853, PASSWORD, software="test vector",
                               padding=b" ")
    assert out == vector
    parsed = stun.parse(vector)
    assert parsed.msg_type == stun.BINDING_SUCCESS
    assert parsed.xor_mapped_address() == (host, 32853)
    assert stun.verify_integrity(vector, PASSWORD.encode())
    assert stun.verify_fingerprint(vector)


def test_long_term_credential_vector():
    key = hashlib.md5("\u30de\u30c8\u30ea\u30c3\u30af\u30b9:example.org:TheMatrIX".encode())
    msg = stun.parse(SAMPLE_LONG_TERM)
    assert msg.get(stun.REALM) == b"example.org"
    assert stun.verify_integrity(SAMPLE_LONG_TERM, key.digest())
    assert not stun.verify_integrity(SAMPLE_LONG_TERM, hashlib.md5(b"x").digest())
    assert not stun.verify_fingerprint(SAMPLE_LONG_TERM)  # it has none


def test_binding_request_round_trip():
    data = stun.binding_request("abcd:efgh", "p" * 24, transaction_id=b"\x01" * 12)
    msg = stun.parse(data)
    assert msg.transaction_id == b"\x01" * 12
    assert msg.username() == "abcd:efgh"
    assert [t for t, _ in msg.attributes][-2:] == [stun.MESSAGE_INTEGRITY, stun.FINGERPRINT]
    assert stun.verify_integrity(data, b"p" * 24)
    assert stun.verify_fingerprint(data)
    assert len(stun.parse(stun.binding_request("u", "p")).transaction_id) == 12


def test_sha256_integrity_preferred_and_checked():
    attrs = [(stun.USERNAME, b"user")]
    data = stun.encode(stun.BINDING_REQUEST, TID, attrs, integrity_key=b"k",
                       integrity_sha256=True)
    assert [t for t, _ in stun.parse(data).attributes] == [
        stun.USERNAME, stun.MESSAGE_INTEGRITY_SHA256, stun.FINGERPRINT]
    assert stun.verify_integrity(data, b"k")
    assert not stun.verify_integrity(data, b"other")
    assert stun.verify_fingerprint(data)


def test_tampering_breaks_integrity_and_fingerprint():
    data = bytearray(SAMPLE_REQUEST)
    data[30] ^= 0x01  # inside SOFTWARE, covered by both
    assert not stun.verify_integrity(bytes(data), PASSWORD.encode())
    assert not stun.verify_fingerprint(bytes(data))
    # An attribute after MESSAGE-INTEGRITY other than FINGERPRINT invalidates it.
    msg = stun.parse(SAMPLE_REQUEST)
    attrs = [(t, v) for t, v in msg.attributes if t != stun.FINGERPRINT]
    extra = stun.encode(stun.BINDING_REQUEST, TID, attrs + [(stun.SOFTWARE, b"late")],
                        fingerprint=False)
    assert not stun.verify_integrity(extra, PASSWORD.encode())


def test_binding_error():
    request = stun.parse(SAMPLE_REQUEST)
    data = stun.binding_error(request, 401, "Unauthorized")
    msg = stun.parse(data)
    assert msg.msg_type == stun.BINDING_ERROR
    assert msg.transaction_id == TID
    assert msg.error_code() == (401, "Unauthorized")
    assert stun.verify_fingerprint(data)
    with pytest.raises(ValueError):
        stun.binding_error(request, 200, "no")


MALFORMED = {
    "empty": b"",
    "short_header": SAMPLE_REQUEST[:19],
    "top_bits_set": b"\xc0" + SAMPLE_REQUEST[1:],
    "bad_cookie": SAMPLE_REQUEST[:4] + b"\x00\x00\x00\x00" + SAMPLE_REQUEST[8:],
    "length_not_multiple_of_4": SAMPLE_REQUEST[:2] + b"\x00\x57" + SAMPLE_REQUEST[4:],
    "length_exceeds_data": SAMPLE_REQUEST[:2] + b"\x00\x5c" + SAMPLE_REQUEST[4:],
    "truncated": SAMPLE_REQUEST[:-4],
    "attr_overruns": SAMPLE_REQUEST[:20] + struct.pack("!HH", 0x8022, 200)
    + SAMPLE_REQUEST[24:],
    "attr_header_cut": SAMPLE_REQUEST[:2] + b"\x00\x04" + SAMPLE_REQUEST[4:20] + b"\x80\x22\x00",
}


@pytest.mark.parametrize("data", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_raises_value_error(data):
    with pytest.raises(ValueError):
        stun.parse(data)
    assert not stun.verify_integrity(data, PASSWORD.encode())
    assert not stun.verify_fingerprint(data)


def test_every_truncation_is_rejected_or_consistent():
    for n in range(len(SAMPLE_REQUEST)):
        with pytest.raises(ValueError):
            stun.parse(SAMPLE_REQUEST[:n])


def test_xor_address_errors():
    with pytest.raises(ValueError):
        stun.decode_xor_address(b"\x00\x01", TID)
    with pytest.raises(ValueError):
        stun.decode_xor_address(b"\x00\x03\x00\x00\x00\x00\x00\x00", TID)
