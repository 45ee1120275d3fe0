"""The ``sfu`` command: ``serve`` a node, talk to one with ``ctl``, or run the ``demo``.

Exit codes of ``sfu ctl``: 0 success, 1 the node answered with an error (or the
connection was lost mid-stream), 2 usage problems (bad JSON, no node listening).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

DEFAULT_CONTROL = "./run/sfu.sock"
SECRET_ENV = "SFU_CONTROL_SECRET"  # so the secret need not appear in `ps` output
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class UsageError(Exception):
    """A problem with the command line; printed as ``sfu: <message>``, exit 2."""


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sfu", description="live-commerce co-streaming SFU")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a media node until SIGINT/SIGTERM")
    serve.add_argument("--udp", type=_host_port, default=("0.0.0.0", 5004), metavar="HOST:PORT",
                       help="media UDP address (default 0.0.0.0:5004)")
    serve.add_argument("--control", default=DEFAULT_CONTROL, metavar="PATH",
                       help=f"control Unix socket (default {DEFAULT_CONTROL})")
    serve.add_argument("--control-tcp", type=_host_port, metavar="HOST:PORT",
                       help="also accept control connections on loopback TCP (needs --secret)")
    serve.add_argument("--secret", default=os.environ.get(SECRET_ENV), metavar="S",
                       help=f"shared secret for --control-tcp (default: ${SECRET_ENV})")
    serve.add_argument("--quic", type=_host_port, default=("0.0.0.0", 4433),
                       metavar="HOST:PORT",
                       help="RTP over QUIC and WebTransport UDP address (default 0.0.0.0:4433)")
    serve.add_argument("--http", type=_host_port, default=("0.0.0.0", 8080), metavar="HOST:PORT",
                       help="viewer page HTTP address (default 0.0.0.0:8080)")
    serve.add_argument("--no-quic", action="store_true",
                       help="plain UDP only: no QUIC, WebTransport or viewer page")
    serve.add_argument("--cert", nargs=2, metavar=("CERT_PEM", "KEY_PEM"),
                       help="TLS certificate and ECDSA key for QUIC (default: a self-signed "
                            "one valid 13 days, which browsers accept by hash)")
    serve.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    serve.add_argument("--no-gop-cache", action="store_true",
                       help="start new viewers with a keyframe request instead of the "
                            "latest held keyframe (for measuring the difference)")

    ctl = sub.add_parser("ctl", help="send one control request and print the result")
    ctl.add_argument("method", metavar="METHOD", help="e.g. node.info, room.create")
    ctl.add_argument("params", nargs="?", default=None, metavar="JSON-PARAMS",
                     help='params as a JSON object, e.g. \'{"room": "r1"}\'')
    ctl.add_argument("--control", default=DEFAULT_CONTROL, metavar="PATH",
                     help=f"control Unix socket (default {DEFAULT_CONTROL})")
    ctl.add_argument("--control-tcp", type=_host_port, metavar="HOST:PORT",
                     help="connect over TCP instead of the Unix socket (needs --secret)")
    ctl.add_argument("--secret", default=os.environ.get(SECRET_ENV), metavar="S")

    demo = sub.add_parser("demo", help="run a local co-streaming demo with synthetic viewers")
    demo.add_argument("--viewers", type=int, default=10, metavar="N")
    demo.add_argument("--seconds", type=float, default=10.0, metavar="S")
    demo.add_argument("--transport", choices=("udp", "quic"), default="udp",
                      help="media over plain UDP (default) or RTP over QUIC")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command in ("serve", "ctl") and args.control_tcp and not args.secret:
        parser.error(f"--control-tcp needs --secret (or ${SECRET_ENV})")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "ctl":
            return _ctl(args)
        if args.command == "demo":
            return _demo(args)
    except UsageError as exc:
        print(f"sfu: {exc}", file=sys.stderr)
        return 2
    parser.print_help(sys.stderr)
    return 2


def _serve(args: argparse.Namespace) -> int:
    from sfu.config import NodeConfig
    from sfu.errors import SfuError
    from sfu.server import serve

    try:
        config = NodeConfig(udp_host=args.udp[0], udp_port=args.udp[1],
                            control_path=args.control, control_tcp=args.control_tcp,
                            secret=args.secret, log_level=args.log_level,
                            gop_cache=not args.no_gop_cache,
                            quic_port=None if args.no_quic else args.quic[1],
                            quic_host=args.quic[0],
                            http_port=None if args.no_quic else args.http[1],
                            http_host=args.http[0],
                            cert_file=args.cert[0] if args.cert else None,
                            key_file=args.cert[1] if args.cert else None)
    except (SfuError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    return serve(config)


def _demo(args: argparse.Namespace) -> int:
    if args.viewers < 1 or args.seconds <= 0:
        raise UsageError("--viewers must be >= 1 and --seconds > 0")
    from sfu.client.demo import run_demo  # lazy: pulls in media libraries

    result = run_demo(args.viewers, args.seconds, args.transport)
    return result if isinstance(result, int) else 0


# -- ctl --

def _parse_params(text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"JSON-PARAMS is not valid JSON ({exc.msg} at column {exc.colno}): "
                         f"{text}") from exc
    if not isinstance(params, dict):
        raise UsageError(f"JSON-PARAMS must be a JSON object like '{{\"room\": \"r1\"}}', "
                         f"got {type(params).__name__}")
    return params


def _ctl(args: argparse.Namespace) -> int:
    params = _parse_params(args.params)
    try:
        return asyncio.run(_ctl_async(args, params))
    except KeyboardInterrupt:  # Ctrl-C while streaming events is the normal way out
        return 0


async def _ctl_async(args: argparse.Namespace, params: dict[str, Any]) -> int:
    from sfu.control.client import Client
    from sfu.errors import SfuError

    try:
        if args.control_tcp:
            host, port = args.control_tcp
            where = f"{host}:{port}"
            client = await Client.connect_tcp(host, port, args.secret)
        else:
            where = args.control
            client = await Client.connect_unix(args.control)
    except SfuError as exc:  # e.g. wrong secret
        print(f"error: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        hint = " — start one with `make run`" if not args.control_tcp else ""
        raise UsageError(f"no node listening on {where}{hint} ({exc.strerror or exc})") from exc
    async with client:
        try:
            result = await client.call(args.method, **params)
        except SfuError as exc:
            print(f"error: {exc.code}: {exc}", file=sys.stderr)
            return 1
        except ConnectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.method != "events.subscribe":
            _print_json(result, sys.stdout, indent=2)
            return 0
        try:
            async for event in client.events():
                _print_json(event, sys.stdout, indent=None)
        except ConnectionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def _print_json(value: object, out: TextIO, indent: int | None) -> None:
    out.write(json.dumps(value, indent=indent, sort_keys=indent is not None,
                         ensure_ascii=False, default=_json_default) + "\n")
    with contextlib.suppress(BrokenPipeError):  # `sfu ctl ... | head` is fine
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
