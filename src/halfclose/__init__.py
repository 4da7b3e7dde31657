"""halfclose: find and remove the waste of silently half-closed HTTP keep-alive connections.

The package is a library first; the ``halfclose`` command is a thin layer over it.

Parts (one package each):

- :mod:`halfclose.capture`: capture files to packet columns.
- :mod:`halfclose.analysis`: connection records, DNS exchanges and findings.
- :mod:`halfclose.lab`: a reproduction on real kernel TCP in network namespaces.
- :mod:`halfclose.netfilter`: the netfilter fix, rendered and applied.
- :mod:`halfclose.sockdiag` and :mod:`halfclose.reap`: destroying half-closed sockets.
- :mod:`halfclose.client`: the keep-alive guard and DNS cache for Python HTTP clients.
- :mod:`halfclose.report`: terminal, JSON and HTML output.
"""

from __future__ import annotations

from halfclose.errors import EnvironmentProblem, ExitStatus, HalfcloseError, InputError, UsageError

__all__ = [
    "EnvironmentProblem",
    "ExitStatus",
    "HalfcloseError",
    "InputError",
    "UsageError",
    "__version__",
]

__version__ = "0.1.0"
