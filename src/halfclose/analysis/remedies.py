"""Which remedies would have removed each kind of finding, and the best one for a capture (pure).

Keyed by the finding kind's value (``stale_reuse``, ...), plus :data:`REDUNDANT_DNS` for DNS
queries a TTL floor would have saved, so the table does not depend on how findings are typed. The
remedies are named as ``halfclose lab compare --strategies`` names them, where each is measured:

* a stale write (``stale_reuse``): ``rules`` and ``reap`` reset or destroy the socket when the
  server's FIN arrives, ``guard`` never writes into a half-closed socket, ``server-rst`` closes with
  RST so the client's socket is dead before it is written to;
* a silent half-close (``silent_half_close``): ``server-rst`` (no half-close at all), ``reap`` (the
  client's side closes as the FIN arrives);
* a lost FIN acknowledgement (``lost_fin_ack``): ``reap`` (the FIN is acknowledged inside the
  RST), ``server-rst`` (no FIN);
* a redundant DNS query: ``dns-cache`` (a TTL floor on the device), ``guard`` (its DNS cache).
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["PREFERENCE", "REDUNDANT_DNS", "REMEDIES_BY_FINDING", "best_remedy", "remedies_for"]

#: The pseudo kind for DNS queries a TTL floor would have saved (not a finding record).
REDUNDANT_DNS = "redundant_dns"

REMEDIES_BY_FINDING: dict[str, tuple[str, ...]] = {
    "stale_reuse": ("rules", "reap", "guard", "server-rst"),
    "silent_half_close": ("server-rst", "reap"),
    "lost_fin_ack": ("reap", "server-rst"),
    REDUNDANT_DNS: ("dns-cache", "guard"),
}

#: The order equal remedies are preferred in: an app change first, then a root agent, rules, the server.
PREFERENCE: tuple[str, ...] = ("guard", "reap", "rules", "server-rst", "dns-cache")


def remedies_for(kind: str) -> tuple[str, ...]:
    """The remedies that would have removed a finding of *kind* (none for a kind not in the table)."""
    return REMEDIES_BY_FINDING.get(kind, ())


def best_remedy(counts: Mapping[str, int]) -> tuple[str, int] | None:
    """The remedy that would have removed the most of *counts* (kind -> how many), and how many.

    None when nothing would have been removed.
    """
    removed: dict[str, int] = {}
    for kind, n in counts.items():
        for remedy in remedies_for(kind):
            removed[remedy] = removed.get(remedy, 0) + n
    if not removed or max(removed.values()) == 0:
        return None
    name = min(removed, key=lambda r: (-removed[r], PREFERENCE.index(r) if r in PREFERENCE else len(PREFERENCE)))
    return name, removed[name]
