"""A real `lineage-guard gateway` server in a thread, for the gateway's tests and benchmark."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from lineage_guard.web.gateway import Gateway, GatewaySettings


@dataclass(frozen=True)
class Served:
    url: str
    gateway: Gateway
    app: Any


@contextmanager
def serve(app: Any, gateway: Gateway) -> Iterator[Served]:
    """`app` on 127.0.0.1 at a free port, until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not (server.started and server.servers):
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(url=f"http://127.0.0.1:{port}", gateway=gateway, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        gateway.close()


def settings(store: str, **overrides: Any) -> GatewaySettings:
    return GatewaySettings(lineage_store=store, **overrides)
