"""The lab's network: three namespaces, phone — link — server, joined by two veth pairs.

::

    phone ns            link ns                    server ns
    eth0  <──veth──>  p0 ─[br0 | delay]─ s0  <──veth──>  eth0
    198.18.N.2/24                                        198.18.N.1/24
    <ula>::2/64                                          <ula>::1/64

With no delay the link namespace bridges ``p0`` and ``s0``; with a delay a user-space process
moves frames between them (see :mod:`halfclose.lab.link`). Checksum and segmentation offloads
are switched off on every veth, so that frames crossing a user-space link carry full checksums.

This is the one module that creates namespaces' devices: veths, addresses and the bridge.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from halfclose.errors import EnvironmentProblem
from halfclose.netns import Claim
from halfclose.proc import run

__all__ = ["Addresses", "Topology", "bridge", "build", "offloads_off", "plan_addresses", "wait_up"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Addresses:
    """The lab's addresses: a /24 from 198.18.0.0/15 and a ULA /64, chosen per run."""

    server_v4: ipaddress.IPv4Address
    phone_v4: ipaddress.IPv4Address
    server_v6: ipaddress.IPv6Address
    phone_v6: ipaddress.IPv6Address

    def server(self, ipv6: bool) -> str:
        return str(self.server_v6 if ipv6 else self.server_v4)

    def phone(self, ipv6: bool) -> str:
        return str(self.phone_v6 if ipv6 else self.phone_v4)


def plan_addresses(run_id: str) -> Addresses:
    """Addresses for run *run_id* (hex): 198.18.N.0/24 with N from the id, and a ULA /64 from it."""
    value = int(run_id, 16)
    net4 = ipaddress.IPv4Network(f"198.{18 + (value >> 16) % 2}.{value % 256}.0/24")
    net6 = ipaddress.IPv6Network(f"fd68:6c66:{value % 65536:x}:{(value >> 8) % 65536:x}::/64")
    return Addresses(
        server_v4=net4.network_address + 1,
        phone_v4=net4.network_address + 2,
        server_v6=net6.network_address + 1,
        phone_v6=net6.network_address + 2,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Topology:
    phone: str
    link: str
    server: str
    addresses: Addresses
    #: The phone's interface, where the lab captures.
    phone_if: str = "eth0"
    link_phone_if: str = "p0"
    link_server_if: str = "s0"


def offloads_off(netns: str, dev: str) -> None:
    """Switch off checksum and segmentation offloads on *dev*, so frames cross a user-space link whole."""
    run(["ethtool", "-K", dev, "tx", "off", "gso", "off", "tso", "off", "gro", "off"], netns=netns)


def build(claim: Claim, addresses: Addresses) -> Topology:
    """Create the three namespaces and the veths, address them; the link is left unjoined."""
    phone = claim.add_netns("phone")
    link = claim.add_netns("link")
    server = claim.add_netns("server")
    topo = Topology(phone=phone, link=link, server=server, addresses=addresses)
    run(["ip", "link", "add", "eth0", "netns", phone, "type", "veth", "peer", "name", "p0", "netns", link])
    run(["ip", "link", "add", "eth0", "netns", server, "type", "veth", "peer", "name", "s0", "netns", link])
    for ns, dev in ((phone, "eth0"), (link, "p0"), (link, "s0"), (server, "eth0")):
        offloads_off(ns, dev)
        run(["ip", "link", "set", "lo", "up"], netns=ns)
        run(["ip", "link", "set", dev, "up"], netns=ns)
    for ns, v4, v6 in (
        (phone, addresses.phone_v4, addresses.phone_v6),
        (server, addresses.server_v4, addresses.server_v6),
    ):
        run(["ip", "addr", "add", f"{v4}/24", "dev", "eth0"], netns=ns)
        run(["ip", "-6", "addr", "add", f"{v6}/64", "dev", "eth0", "nodad"], netns=ns)
    # The phone resolves through the lab's DNS server: `ip netns exec` bind-mounts this file
    # over /etc/resolv.conf.
    etc = Path("/etc/netns") / phone
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(f"nameserver {addresses.server_v4}\noptions timeout:2 attempts:2\n")
    return topo


def wait_up(netns: str, devs: Sequence[str], *, timeout: float = 5.0) -> None:
    """Wait until each of *devs* in *netns* is operationally up.

    A veth whose carrier has just come on drops what it is given until the kernel's link watch
    (which batches such events up to a second apart) has activated its queue; the operational
    state turns UP at that same moment. Without this wait the first frames of a fresh lab (an
    ARP request, a DNS query) can vanish and cost a retransmission timeout.

    Raises:
        EnvironmentProblem: a device is not up within *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    todo = list(devs)
    while todo:
        out = run(["ip", "-o", "link", "show"], netns=netns).stdout
        states = {}
        for row in out.splitlines():
            name = row.split(":", 2)[1].strip().split("@")[0]
            words = row.split()
            states[name] = words[words.index("state") + 1] if "state" in words else "UNKNOWN"
        todo = [d for d in todo if states.get(d) != "UP"]
        if not todo:
            return
        if time.monotonic() > deadline:
            raise EnvironmentProblem(f"{', '.join(todo)} in {netns} not up within {timeout:g} s "
                                     f"(state {states.get(todo[0], 'missing')})")
        time.sleep(0.02)


def bridge(netns: str, a: str, b: str) -> None:
    """Join *a* and *b* in *netns* with a Linux bridge ``br0`` (no delay); return once all are up."""
    run(["ip", "link", "add", "name", "br0", "type", "bridge", "stp_state", "0", "forward_delay", "0"],
        netns=netns)
    for dev in (a, b):
        run(["ip", "link", "set", dev, "master", "br0"], netns=netns)
    for dev in ("br0", a, b):
        run(["ip", "link", "set", dev, "up"], netns=netns)
    wait_up(netns, ["br0", a, b])
