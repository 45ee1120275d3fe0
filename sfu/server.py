"""Process entry: uvloop, the Node, the control server, signals.

``serve(config)`` runs a node until SIGINT/SIGTERM. ``start_node(config)`` runs one inside
the current loop for tests, benchmarks and the demo.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import stat
from typing import Any

import uvloop

from sfu.config import NodeConfig
from sfu.node import Node

log = logging.getLogger("sfu.server")


class RunningNode:
    """A started node and its control server; ``await close()`` frees everything."""

    def __init__(self, node: Node, control: Any, config: NodeConfig) -> None:
        self.node = node
        self.control = control
        self.config = config

    @property
    def udp_address(self) -> tuple[str, int]:
        """Where clients send media, e.g. ("127.0.0.1", 40123)."""
        return self.node.udp_address

    @property
    def udp(self) -> str:
        host, port = self.udp_address
        return f"{host}:{port}"

    @property
    def control_path(self) -> str | None:
        return self.config.control_path

    @property
    def control_tcp(self) -> tuple[str, int] | None:
        return self.config.control_tcp

    async def close(self) -> None:
        if self.control is not None:
            control, self.control = self.control, None
            result = control.close()
            if inspect.isawaitable(result):
                await result
            await control.wait_closed()
        self.node.close()
        _remove_socket_file(self.config.control_path)


def _remove_socket_file(path: str | None) -> None:
    if not path:
        return
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


async def start_node(config: NodeConfig) -> RunningNode:
    """Start a node in the running loop: UDP bound, engine timers running, control server
    listening on ``config.control_path`` / ``config.control_tcp`` (if set)."""
    node = Node(config)
    await node.start()
    control = None
    try:
        if config.control_path or config.control_tcp:
            from sfu.control.server import start_control_server

            control = await start_control_server(node.call, node.bus, config.control_path,
                                                 config.control_tcp, config.secret)
    except BaseException:
        node.close()
        raise
    return RunningNode(node, control, config)


async def _run(config: NodeConfig) -> int:
    running = await start_node(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    control = [f"unix:{config.control_path}"] if config.control_path else []
    if config.control_tcp:
        control.append(f"tcp:{config.control_tcp[0]}:{config.control_tcp[1]}")
    log.info("sfu node %s: media udp %s (bound %s:%d), control %s", config.node_id,
             running.udp, config.udp_host, running.node.udp.port if running.node.udp else 0,
             ", ".join(control) or "none")
    node = running.node
    if node.quic is not None:
        log.info("RTP over QUIC / WebTransport on udp %s:%d (certificate sha-256 %s, valid "
                 "until %s)", config.quic_host or config.udp_host, node.quic.port,
                 node.quic.cert.sha256.hex(), node.quic.cert.not_after.isoformat())
    if node.web is not None:
        log.info("viewer page: http://%s:%d/viewer?room=ROOM&participant=ID&token=TOKEN",
                 config.public_host, node.web.port)
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await running.close()
    return 0


def serve(config: NodeConfig) -> int:
    """Run a node until SIGINT/SIGTERM; returns the process exit code."""
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return uvloop.run(_run(config))
    except OSError as exc:  # e.g. port in use: one clear line, not a traceback
        log.error("cannot start: %s", exc)
        return 1
