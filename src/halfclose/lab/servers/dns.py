"""The lab's DNS: the built-in server's answers and dnsmasq's command line."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

__all__ = ["DnsAnswers", "dnsmasq_argv", "serve_dns"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsAnswers:
    """What the lab DNS server answers: *name* -> these addresses, with this TTL."""

    name: str
    ttl: int
    a: tuple[str, ...] = ()
    aaaa: tuple[str, ...] = ()

    def respond(self, wire: bytes) -> bytes | None:
        """The response to one query in wire format (None for a message that is not a query)."""
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.rrset

        try:
            query = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many types for malformed input
            return None
        if query.flags & dns.flags.QR or not query.question:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        qname = question.name.to_text(omit_final_dot=True).lower()
        if qname != self.name.lower():
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        addresses = {dns.rdatatype.A: self.a, dns.rdatatype.AAAA: self.aaaa}.get(question.rdtype, ())
        if addresses:
            response.answer.append(
                dns.rrset.from_text_list(question.name, self.ttl, dns.rdataclass.IN, question.rdtype, list(addresses))
            )
        return response.to_wire()


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, answers: DnsAnswers) -> None:
        self._answers = answers
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        reply = self._answers.respond(data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


async def serve_dns(listen: Sequence[str], answers: DnsAnswers) -> list[asyncio.DatagramTransport]:
    """Answer on UDP port 53 of each address in *listen*; return the transports (close them to stop).

    One A and one AAAA answer are made before listening, so that dnspython's lazily imported parts
    are loaded then and not in the first client's lookup (that cost 0.2 s, more on a loaded machine).
    """
    import dns.message

    for rdtype in ("A", "AAAA"):
        answers.respond(dns.message.make_query(answers.name, rdtype).to_wire())
    loop = asyncio.get_running_loop()
    transports = []
    for addr in listen:
        transport, _ = await loop.create_datagram_endpoint(lambda: _DnsProtocol(answers), local_addr=(addr, 53))
        transports.append(transport)
    return transports


def dnsmasq_argv(*, listen: Sequence[str], answers: DnsAnswers, pid_file: Path) -> list[str]:
    """dnsmasq's command line for the lab: authoritative for one name, nothing else, in the foreground."""
    record = ",".join([answers.name, *answers.a, *answers.aaaa])
    argv = [
        "dnsmasq",
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--user=root",
        "--group=root",
        f"--pid-file={pid_file}",
        "--log-facility=-",
        f"--local-ttl={answers.ttl}",
        f"--host-record={record}",
        "--port=53",
    ]
    argv += [f"--listen-address={addr}" for addr in listen]
    # Other names: refused by --no-resolv with no servers; answer them NXDOMAIN locally instead.
    argv.append("--local=/#/")
    return argv
