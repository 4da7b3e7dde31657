"""The lab: the problem reproduced on real kernel TCP in network namespaces.

``run_lab(LabConfig(...))`` builds phone — link — server namespaces, starts an HTTP server with a
keep-alive idle timeout and a DNS server on the server side, runs an app emulator as an app uid
on the phone side, captures the phone's interface, and cleans everything up afterwards.

Names are imported lazily, so that ``python -m halfclose.lab.servers`` and
``python -m halfclose.lab.app`` (run inside the namespaces) load only what they need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from halfclose.lab.app import RequestRecord
    from halfclose.lab.config import ClientKind, DnsKind, Fix, LabConfig, ServerKind
    from halfclose.lab.figures import RunFigures
    from halfclose.lab.runner import LabResult, run_lab

__all__ = [
    "ClientKind",
    "DnsKind",
    "Fix",
    "LabConfig",
    "LabResult",
    "RequestRecord",
    "RunFigures",
    "ServerKind",
    "run_lab",
]

_WHERE = {
    "RequestRecord": "halfclose.lab.app",
    "ClientKind": "halfclose.lab.config",
    "DnsKind": "halfclose.lab.config",
    "Fix": "halfclose.lab.config",
    "LabConfig": "halfclose.lab.config",
    "ServerKind": "halfclose.lab.config",
    "LabResult": "halfclose.lab.runner",
    "run_lab": "halfclose.lab.runner",
    "RunFigures": "halfclose.lab.figures",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'halfclose.lab' has no attribute {name!r}")
