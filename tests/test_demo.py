"""`sfu demo` end to end (the README's first thing to try), over UDP and over QUIC."""

from __future__ import annotations

import asyncio
import io

import pytest

from sfu.client.demo import _demo, run_demo


@pytest.mark.parametrize("transport", ["udp", "quic"])
def test_demo_passes(transport: str) -> None:
    out = io.StringIO()
    code = asyncio.run(asyncio.wait_for(_demo(2, 1.5, out, transport), 30))
    text = out.getvalue()
    assert code == 0, text
    assert "PASS: worst viewer decoded" in text
    assert ("RTP over QUIC" in text) == (transport == "quic")


def test_demo_rejects_unknown_transport(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(1, 1.0, "sctp") == 2
    assert "--transport must be udp or quic" in capsys.readouterr().err
