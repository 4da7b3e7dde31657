"""The CLOSE_WAIT reaper: destroy idle keep-alive sockets the server has half-closed.

:mod:`.decision` (pure: selected? CLOSE_WAIT? drained? look again when?), :mod:`.nflog` (the
NFLOG listener and its wire format), :mod:`.agent` (the loop: NFLOG or polling, destroy via
:mod:`halfclose.sockdiag`), :mod:`.watch` (the live view's model). The rules that feed the NFLOG
group are :mod:`halfclose.netfilter`'s NFLOG strategy.
"""

from halfclose.reap.agent import Counters, Reaper, ReapEvent, StateFile, state_dir
from halfclose.reap.decision import Rechecks, Selection, Verdict, is_retryable, judge

__all__ = [
    "Counters",
    "ReapEvent",
    "Reaper",
    "Rechecks",
    "Selection",
    "StateFile",
    "Verdict",
    "is_retryable",
    "judge",
    "state_dir",
]
