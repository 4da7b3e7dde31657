"""The lab's HTTP clients: one module per client, a registry that says what each needs.

The registry is data (:data:`CLIENTS`): the runner reads it to check, before a run, that the
client's Python modules import as the app uid and that its programs are installed; the app
(:mod:`halfclose.lab.app`) reads it to load the client's module, whose ``run(workload, emit)``
makes the requests and emits one :class:`~halfclose.lab.app.RequestRecord` each. A new client is
a module with that function and one entry here (and a :class:`~halfclose.lab.config.ClientKind`).
Nothing here imports a client library: that happens in the app process only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from halfclose.lab.app import RequestRecord, Workload

__all__ = ["CLIENTS", "ClientSpec", "run_client"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSpec:
    """What one client needs and can do.

    Fields:
        module: the module (under ``halfclose.lab.clients``) whose ``run`` drives it.
        imports: Python modules the app process must import for it (checked as the app uid).
        programs: programs it runs as children of the app (checked before a run).
        http2: it speaks HTTP/2 over TLS (ALPN h2) when the server offers it (``--http2``); the
            others stay on HTTP/1.1.
        h2c: it also speaks h2c (HTTP/2 over plain TCP, with prior knowledge).
        python_package: where the Python modules come from when they are missing.
    """

    module: str
    imports: tuple[str, ...] = ()
    programs: tuple[str, ...] = ()
    http2: bool = False
    h2c: bool = False
    python_package: str = "halfclose"


_PY = "_python"

#: Client name (a ClientKind value) -> what it needs.
CLIENTS: dict[str, ClientSpec] = {
    "reuse": ClientSpec(module=_PY, imports=("http.client", "ssl")),
    "urllib3": ClientSpec(module=_PY, imports=("urllib3",)),
    "requests": ClientSpec(module=_PY, imports=("requests",)),
    "httpx": ClientSpec(module=_PY, imports=("httpx", "h2"), http2=True, h2c=True, python_package="httpx[http2]"),
    "aiohttp": ClientSpec(module="_aiohttp", imports=("aiohttp",), python_package="aiohttp"),
    "curl": ClientSpec(module="_curl", programs=("curl",), http2=True, h2c=True),
    "node": ClientSpec(module="_node", programs=("node",)),
    "chromium": ClientSpec(module="_chromium", imports=("playwright.sync_api",), programs=("chromium", "certutil"),
                           http2=True, python_package="playwright (halfclose[browser])"),
    "go": ClientSpec(module="_go", programs=("go",), http2=True),
    "guard-requests": ClientSpec(module=_PY, imports=("halfclose.client",)),
    # halfclose's guarded httpx transport speaks HTTP/1.1 only.
    "guard-httpx": ClientSpec(module=_PY, imports=("halfclose.client",)),
    "guard-aiohttp": ClientSpec(module="_aiohttp", imports=("aiohttp", "halfclose.client"), python_package="aiohttp"),
}


def run_client(workload: Workload, emit: Callable[[RequestRecord], None]) -> int:
    """Run *workload* with its client, emitting one record per request; the app's exit status."""
    spec = CLIENTS[workload.client]
    module = importlib.import_module(f"{__name__}.{spec.module}")
    run: Callable[[Workload, Callable[[RequestRecord], None]], int] = module.run
    return run(workload, emit)
