"""The reaper's decisions, pure: is this socket selected, in CLOSE_WAIT, drained; when to look again.

Rules:

1. A socket is *selected* when its uid is one of the selected uids, its remote port one of the
   selected ports (no ports: any) and its remote address inside one of the selected networks (no
   networks: any). The remote end is ``id.dst``/``id.dport`` in sock_diag terms.
2. It may be destroyed only in CLOSE_WAIT (the peer's FIN was processed) with nothing left for
   the app to read and nothing of the app's still unacknowledged. In CLOSE_WAIT the kernel
   reports ``idiag_rqueue = rcv_nxt - copied_seq``, and the FIN itself occupies one sequence
   number until the app reads end-of-file, so ``idiag_rqueue`` is 1 for a drained socket whose
   app has not yet read EOF and 0 after it has: *drained* means ``idiag_rqueue <= 1``.
3. An NFLOG copy of the FIN is taken before TCP processes it, and the app may still be reading
   the last response. Those cases (ESTABLISHED, unread data, unsent data) are looked at again on
   a growing schedule (:data:`RECHECK_DELAYS`, then every last delay) until the settle time runs
   out; every other verdict is final.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from halfclose.sockdiag.wire import InetDiagMsg, TcpState

__all__ = ["RECHECK_DELAYS", "Network", "Rechecks", "Selection", "Verdict", "is_retryable", "judge"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Seconds after the FIN at which an undecided socket is looked at again.
RECHECK_DELAYS: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


class Verdict(enum.Enum):
    """What to do with one socket, and if not destroying it, why not."""

    DESTROY = "destroy"
    OTHER_UID = "other-uid"
    OTHER_PORT = "other-port"
    OTHER_ADDRESS = "other-address"
    NOT_CLOSE_WAIT = "not-close-wait"
    UNREAD_DATA = "unread-data"
    UNSENT_DATA = "unsent-data"


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Which sockets the reaper may touch: uids (required), remote ports and networks (optional)."""

    uids: frozenset[int]
    ports: frozenset[int] = frozenset()
    networks: tuple[Network, ...] = ()

    def reason_not_selected(self, msg: InetDiagMsg) -> Verdict | None:
        """None when *msg* is selected, else the first rule it fails."""
        if msg.idiag_uid not in self.uids:
            return Verdict.OTHER_UID
        if self.ports and msg.id.dport not in self.ports:
            return Verdict.OTHER_PORT
        if self.networks:
            dst = msg.id.dst
            if isinstance(dst, ipaddress.IPv6Address) and dst.ipv4_mapped is not None:
                candidates: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...] = (dst, dst.ipv4_mapped)
            else:
                candidates = (dst,)
            if not any(a in n for a in candidates for n in self.networks if a.version == n.version):
                return Verdict.OTHER_ADDRESS
        return None


def judge(msg: InetDiagMsg, selection: Selection) -> Verdict:
    """The verdict for one socket as sock_diag reported it (rules 1 and 2 of the module doc)."""
    other = selection.reason_not_selected(msg)
    if other is not None:
        return other
    if msg.idiag_state != TcpState.CLOSE_WAIT:
        return Verdict.NOT_CLOSE_WAIT
    if msg.idiag_rqueue > 1:
        return Verdict.UNREAD_DATA
    if msg.idiag_wqueue > 0:
        return Verdict.UNSENT_DATA
    return Verdict.DESTROY


def is_retryable(verdict: Verdict, msg: InetDiagMsg | None) -> bool:
    """Whether a later look may change the verdict (rule 3): the FIN not yet processed
    (still ESTABLISHED), or data still to be read or acknowledged."""
    if verdict in (Verdict.UNREAD_DATA, Verdict.UNSENT_DATA):
        return True
    return verdict is Verdict.NOT_CLOSE_WAIT and msg is not None and msg.idiag_state == TcpState.ESTABLISHED


@dataclass(slots=True)
class _Pending:
    first: float
    attempt: int
    due: float


@dataclass(slots=True, kw_only=True)
class Rechecks:
    """Keys (4-tuples) waiting to be looked at again, each on the :data:`RECHECK_DELAYS` schedule
    counted from when it was first added, until *settle* seconds have passed."""

    settle: float
    delays: tuple[float, ...] = RECHECK_DELAYS
    _items: dict[object, _Pending] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._items)

    def _delay(self, attempt: int) -> float:
        if attempt < len(self.delays):
            return self.delays[attempt]
        return self.delays[-1] * (attempt - len(self.delays) + 2)

    def schedule(self, key: object, now: float) -> bool:
        """Plan the next look at *key*; False (and forgotten) when its settle time is over."""
        item = self._items.get(key)
        if item is None:
            item = _Pending(first=now, attempt=0, due=0.0)
            self._items[key] = item
        else:
            item.attempt += 1
        due = item.first + self._delay(item.attempt)
        if due - item.first > self.settle:
            del self._items[key]
            return False
        item.due = max(due, now)
        return True

    def started(self, key: object) -> float:
        """When *key* was first added (the time its FIN arrived)."""
        return self._items[key].first

    def forget(self, key: object) -> None:
        """Stop looking at *key* (decided)."""
        self._items.pop(key, None)

    def pop_due(self, now: float) -> list[object]:
        """Keys whose look is due at *now* (they stay known until :meth:`schedule` or :meth:`forget`)."""
        return [k for k, v in self._items.items() if v.due <= now]

    def next_due(self) -> float | None:
        """The earliest due time, or None when nothing waits."""
        if not self._items:
            return None
        return min((v.due for v in self._items.values()), default=None)

    def keys(self) -> Iterable[object]:
        """All waiting keys."""
        return list(self._items)
