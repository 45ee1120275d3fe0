"""Native RTP parsing (sfu._native.parse_rtp / rtp_extension / build_rtp) against the
annotated vectors in tests/vectors/rtp.hex and the pure-Python oracle."""

import random

import pytest
from oracle import Vector, load_vectors
from oracle import rtp as ref
from parse_helpers import check_mutations, check_truncations, check_vector

from sfu import _native

VECTORS = load_vectors("rtp.hex")
VALID = [v for v in VECTORS if v.valid]
INVALID = [v for v in VECTORS if not v.valid]


def test_vector_names_cover_the_brief():
    names = {v.name for v in VECTORS}
    for required in ("rtp-version-1", "rtp-csrc-overrun", "rtp-ext-length-overrun",
                     "rtp-padding-zero", "rtp-padding-too-big"):
        assert required in names
    assert len(VALID) >= 10 and len(INVALID) >= 10


@pytest.mark.parametrize("vec", VECTORS, ids=[v.name for v in VECTORS])
def test_oracle_vector(vec: Vector):
    # The oracle itself is checked against the hand-annotated expectations.
    parsed = check_vector(ref.parse, vec)
    if parsed is not None:
        assert parsed["header_size"] + parsed["payload_size"] + parsed["padding_size"] == len(
            vec.data)


@pytest.mark.parametrize("vec", VECTORS, ids=[v.name for v in VECTORS])
def test_native_vector(vec: Vector):
    check_vector(_native.parse_rtp, vec, oracle=ref.parse)


@pytest.mark.parametrize("vec", VALID, ids=[v.name for v in VALID])
def test_native_truncations(vec: Vector):
    check_truncations(_native.parse_rtp, ref.parse, vec.data)


@pytest.mark.parametrize("vec", VECTORS, ids=[v.name for v in VECTORS])
def test_rtp_extension_vector(vec: Vector):
    for ext_id in range(256):
        try:
            want: bytes | None | str = ref.extension(vec.data, ext_id)
        except ValueError:
            want = "ValueError"
        try:
            got: bytes | None | str = _native.rtp_extension(vec.data, ext_id)
        except ValueError:
            got = "ValueError"
        assert got == want, f"id {ext_id}"


def test_random_packets_match_oracle():
    rng = random.Random(3550)
    for _ in range(1500):
        args = ref.random_args(rng)
        data = ref.build(**args, two_byte=rng.random() < 0.2 or None)
        parsed = _native.parse_rtp(data)
        assert parsed == ref.parse(data)
        assert parsed["payload"] == args["payload"]
        assert parsed["extensions"] == args["extensions"]
        for ext_id, value in args["extensions"].items():
            assert _native.rtp_extension(data, ext_id) == value
        absent = next(i for i in range(1, 256) if i not in args["extensions"])
        assert _native.rtp_extension(data, absent) is None


def test_native_builder_round_trips_through_oracle():
    rng = random.Random(8285)
    for _ in range(1500):
        args = ref.random_args(rng)
        data = _native.build_rtp(**args)
        parsed = ref.parse(data)
        for key in ("payload_type", "sequence_number", "timestamp", "ssrc", "marker",
                    "csrcs", "extensions", "payload"):
            assert parsed[key] == args[key], key
        assert parsed["padding_size"] == args["padding"]
        assert parsed["extension"] == bool(args["extensions"])


def test_builder_one_byte_form_when_possible():
    one = _native.build_rtp(96, 1, 2, 3, b"x", extensions={1: b"a", 14: b"b" * 16})
    two = _native.build_rtp(96, 1, 2, 3, b"x", extensions={15: b"a"})
    empty = _native.build_rtp(96, 1, 2, 3, b"x", extensions={2: b""})
    assert ref.parse(one)["ext_profile"] == ref.ONE_BYTE_PROFILE
    assert ref.parse(two)["ext_profile"] == ref.TWO_BYTE_PROFILE
    assert ref.parse(empty)["ext_profile"] == ref.TWO_BYTE_PROFILE
    assert ref.parse(empty)["extensions"] == {2: b""}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload_type": 128},
        {"payload_type": -1},
        {"padding": 256},
        {"csrcs": list(range(16))},
        {"extensions": {256: b"x"}},
        {"extensions": {1: b"x" * 256}},
    ],
    ids=["pt-128", "pt-negative", "padding-256", "csrc-16", "ext-id-256", "ext-len-256"],
)
def test_builder_rejects_out_of_range(kwargs: dict[str, object]):
    args: dict[str, object] = {"payload_type": 96, "sequence_number": 1, "timestamp": 2,
                               "ssrc": 3, "payload": b""}
    args.update(kwargs)
    with pytest.raises(ValueError):
        _native.build_rtp(**args)


def test_mutations_agree_with_oracle():
    rng = random.Random(1889)
    seeds = [v.data for v in VALID] + [ref.build(**ref.random_args(rng)) for _ in range(50)]
    check_mutations(_native.parse_rtp, ref.parse, rng, seeds)


def test_oracle_agrees_with_aiortc():
    # A second, independent reading of RFC 3550 keeps the oracle honest.
    from aiortc.rtp import RtpPacket

    rng = random.Random(1996)
    for _ in range(500):
        args = ref.random_args(rng)
        data = ref.build(**args, two_byte=rng.random() < 0.2 or None)
        ours, theirs = ref.parse(data), RtpPacket.parse(data)
        assert (ours["payload_type"], ours["sequence_number"], ours["timestamp"], ours["ssrc"],
                ours["marker"], ours["csrcs"], ours["payload"], ours["padding_size"]) == (
            theirs.payload_type, theirs.sequence_number, theirs.timestamp, theirs.ssrc,
            bool(theirs.marker), theirs.csrc, theirs.payload, theirs.padding_size)
