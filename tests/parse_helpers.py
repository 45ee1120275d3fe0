"""Shared checks of the parser tests (test_rtp_parse.py, test_rtcp_parse.py): a native parser
is held against the annotated vectors in tests/vectors/*.hex and its pure-Python oracle the
same way for every protocol."""

import random
from collections.abc import Callable
from typing import Any

import pytest
from oracle import Vector, lookup

Parse = Callable[[bytes], Any]


def or_error(parse: Parse, data: bytes) -> Any:
    """``parse(data)``, or "ValueError" (any other exception propagates: a bug)."""
    try:
        return parse(data)
    except ValueError:
        return "ValueError"


def check_vector(parse: Parse, vec: Vector, oracle: Parse | None = None) -> Any:
    """An invalid vector must raise ValueError; a valid one must parse to every annotated
    field (and, given ``oracle``, to exactly what the oracle says). Returns the parse, or
    None for an invalid vector."""
    if not vec.valid:
        with pytest.raises(ValueError):
            parse(vec.data)
        return None
    parsed = parse(vec.data)
    for path, expected in vec.expect:
        assert lookup(parsed, path) == expected, path
    if oracle is not None:
        assert parsed == oracle(vec.data)
    return parsed


def check_truncations(native: Parse, oracle: Parse, data: bytes) -> None:
    """Every prefix either parses to what the oracle says or raises ValueError with it."""
    for cut in range(len(data)):
        prefix = data[:cut]
        assert or_error(native, prefix) == or_error(oracle, prefix), f"cut at {cut}"


def check_mutations(native: Parse, oracle: Parse, rng: random.Random, seeds: list[bytes],
                    count: int = 3000) -> None:
    """Bit flips and length edits of the seeds: accept/reject and every field agree."""
    for i in range(count):
        data = bytearray(seeds[i % len(seeds)])
        for _ in range(rng.randint(1, 4)):
            if data and rng.random() < 0.8:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            else:
                data = data[: rng.randrange(len(data) + 1)]
        mutated = bytes(data)
        assert or_error(native, mutated) == or_error(oracle, mutated), mutated.hex()
