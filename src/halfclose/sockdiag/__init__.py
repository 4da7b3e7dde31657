"""A small typed sock_diag client for TCP: dump, exact lookup, destroy (SOCK_DESTROY).

pyroute2's ``DiagSocket`` only dumps (no exact lookup, no destroy, and it switches off
``NLMSG_ERROR`` handling because ``NLMSG_ERROR == AF_INET``), so the wire structs are written out
here from the uapi headers: :mod:`.netlink` (framing), :mod:`.wire` (inet_diag and tcp_info),
:mod:`.client` (the socket adapter), :mod:`.nsenter` (namespace switching).
"""

from halfclose.sockdiag.client import (
    NETLINK_SOCK_DIAG,
    DestroyOutcome,
    DestroyResult,
    SockDiag,
    SockDiagError,
    has_cap_net_admin,
)
from halfclose.sockdiag.nsenter import netns_entered
from halfclose.sockdiag.wire import (
    INET_DIAG_NOCOOKIE,
    TCPF_ALL,
    InetDiagMsg,
    InetDiagSockId,
    TcpInfo,
    TcpState,
    state_mask,
)

__all__ = [
    "INET_DIAG_NOCOOKIE",
    "NETLINK_SOCK_DIAG",
    "TCPF_ALL",
    "DestroyOutcome",
    "DestroyResult",
    "InetDiagMsg",
    "InetDiagSockId",
    "SockDiag",
    "SockDiagError",
    "TcpInfo",
    "TcpState",
    "has_cap_net_admin",
    "netns_entered",
    "state_mask",
]
