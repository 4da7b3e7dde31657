"""The reaper: find CLOSE_WAIT sockets of selected apps and destroy them.

Two triggers feed it. ``nflog``: each server FIN on a tagged connection arrives as an NFLOG
copy (:mod:`halfclose.reap.nflog`), the socket it was addressed to is looked up by its exact
4-tuple and judged (:mod:`halfclose.reap.decision`); undecided sockets are looked at again on a
short schedule. ``poll``: every interval one dump of all CLOSE_WAIT sockets is judged. Both end
in :meth:`Reaper.act`: SOCK_DESTROY with the socket's cookie, so a 4-tuple reused by a new
socket in the meantime is never touched.

Every action is reported to *emit* as a :class:`ReapEvent`; :class:`Counters` keep the totals.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halfclose.reap.decision import Rechecks, Selection, Verdict, is_retryable, judge
from halfclose.reap.nflog import NflogBufferOverrun, NflogListener, TcpSegment
from halfclose.sockdiag.client import DestroyOutcome, SockDiag, SockDiagError
from halfclose.sockdiag.wire import InetDiagMsg, InetDiagSockId, TcpState, state_mask

__all__ = ["Counters", "ReapEvent", "Reaper", "StateFile", "state_dir"]


@dataclass(slots=True)
class Counters:
    """Running totals of one reaper."""

    fins_seen: int = 0
    destroyed: int = 0
    would_destroy: int = 0
    vanished: int = 0
    errors: int = 0
    overruns: int = 0
    sweeps: int = 0
    #: Second and later looks at a socket flagged by a FIN (not yet CLOSE_WAIT, or data queued).
    rechecks: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    destroyed_by_uid: dict[int, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        """Count one socket left alone for *reason*."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready copy (uid keys as strings)."""
        body = asdict(self)
        body["destroyed_by_uid"] = {str(k): v for k, v in self.destroyed_by_uid.items()}
        return body

    def summary(self) -> str:
        """One line for a person."""
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"FINs seen {self.fins_seen}, destroyed {self.destroyed}, would destroy {self.would_destroy}, "
            f"vanished {self.vanished}, errors {self.errors}, overruns {self.overruns}, "
            f"sweeps {self.sweeps}, rechecks {self.rechecks}; skipped: {skipped}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReapEvent:
    """One action of the reaper, one JSON line with ``--log json``.

    ``action``: ``destroy``, ``would-destroy`` (dry run), ``skip``, ``vanished``, ``error``,
    ``overrun``. ``trigger``: ``nflog``, ``recheck``, ``poll``, ``sweep`` (after an overrun) or
    ``start`` (the sweep at start-up).
    ``local``/``remote`` are ``address:port`` (IPv6 in brackets).
    """

    ts: float
    action: str
    trigger: str
    reason: str | None = None
    uid: int | None = None
    local: str | None = None
    remote: str | None = None
    state: str | None = None
    rqueue: int | None = None
    wqueue: int | None = None
    cookie: int | None = None
    detail: str | None = None

    def to_json(self) -> str:
        """The event as one compact JSON object (fields that are None left out)."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, separators=(",", ":"))


def _endpoint(addr: object, port: int) -> str:
    text = str(addr)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _state_name(value: int) -> str:
    try:
        return TcpState(value).name
    except ValueError:
        return str(value)


def state_dir() -> Path:
    """Where reapers publish their counters: ``$HALFCLOSE_STATE_DIR/reap`` (``/run/halfclose/reap``).

    A subfolder, so that the namespace claims (``*.json`` directly in the state folder) and the
    reaper files never mix.
    """
    return Path(os.environ.get("HALFCLOSE_STATE_DIR", "/run/halfclose")) / "reap"


def netns_inode() -> int:
    """Inode of this process's network namespace (tells reapers of different namespaces apart)."""
    return os.stat("/proc/self/ns/net").st_ino


@dataclass(kw_only=True)
class StateFile:
    """The reaper's published state, ``<state_dir>/<pid>.json``, replaced atomically."""

    path: Path
    header: dict[str, object]

    def write(self, counters: Counters) -> None:
        """Write the header plus the counters now (errors to write are reported, not raised)."""
        body = {**self.header, "updated": time.time(), "counters": counters.as_dict()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(body))
            tmp.replace(self.path)
        except OSError:
            pass  # publishing is best effort; the reaper's work does not depend on it

    def remove(self) -> None:
        """Delete the file."""
        with contextlib.suppress(OSError):
            self.path.unlink()


class Reaper:
    """Judges and destroys sockets; one instance per network namespace.

    *sockdiag* must live in the namespace of the sockets. *settle* bounds how long an undecided
    socket flagged by a FIN is looked at again. With *dry_run* nothing is destroyed.
    """

    def __init__(
        self,
        *,
        selection: Selection,
        sockdiag: SockDiag,
        emit: Callable[[ReapEvent], None] = lambda _e: None,
        dry_run: bool = False,
        settle: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.selection = selection
        self.sockdiag = sockdiag
        self.emit = emit
        self.dry_run = dry_run
        self.clock = clock
        self.counters = Counters()
        self.rechecks = Rechecks(settle=settle)
        # Cookies already reported by a sweep (so that poll mode counts each socket once).
        self._seen_by_sweep: set[int] = set()

    # -- events -------------------------------------------------------------------------

    def _event(self, action: str, trigger: str, msg: InetDiagMsg | None = None, **kw: object) -> None:
        if msg is not None:
            kw.setdefault("uid", msg.idiag_uid)
            kw.setdefault("local", _endpoint(msg.id.src, msg.id.sport))
            kw.setdefault("remote", _endpoint(msg.id.dst, msg.id.dport))
            kw.setdefault("state", _state_name(msg.idiag_state))
            kw.setdefault("rqueue", msg.idiag_rqueue)
            kw.setdefault("wqueue", msg.idiag_wqueue)
            kw.setdefault("cookie", msg.id.cookie)
        self.emit(ReapEvent(ts=time.time(), action=action, trigger=trigger, **kw))  # type: ignore[arg-type]

    def _error(self, trigger: str, exc: Exception, msg: InetDiagMsg | None = None) -> None:
        self.counters.errors += 1
        self._event("error", trigger, msg, detail=str(exc))

    # -- acting -------------------------------------------------------------------------

    def destroy_socket(self, msg: InetDiagMsg) -> DestroyOutcome:
        """SOCK_DESTROY the socket *msg* describes (by 4-tuple and cookie)."""
        return self.sockdiag.destroy(msg.id).outcome

    def act(self, msg: InetDiagMsg, trigger: str) -> None:
        """Destroy *msg* (already judged DESTROY), or report it in a dry run."""
        if self.dry_run:
            self.counters.would_destroy += 1
            self._event("would-destroy", trigger, msg)
            return
        try:
            outcome = self.destroy_socket(msg)
        except SockDiagError as exc:
            self._error(trigger, exc, msg)
            return
        if outcome is DestroyOutcome.DESTROYED:
            self.counters.destroyed += 1
            by_uid = self.counters.destroyed_by_uid
            by_uid[msg.idiag_uid] = by_uid.get(msg.idiag_uid, 0) + 1
            self._event("destroy", trigger, msg)
        else:
            self.counters.vanished += 1
            self._event("vanished", trigger, msg, detail="socket gone before destroy")

    # -- nflog trigger ------------------------------------------------------------------

    def on_fin(self, segment: TcpSegment) -> None:
        """Handle one logged FIN: look up the socket it was addressed to and decide."""
        if not segment.is_fin:
            return
        self.counters.fins_seen += 1
        self._look(segment.receiver_sockid(), "nflog")

    def _look(self, sockid: InetDiagSockId, trigger: str) -> None:
        try:
            msg = self.sockdiag.lookup(sockid)
        except SockDiagError as exc:
            self.rechecks.forget(sockid)
            self._error(trigger, exc)
            return
        if msg is None:
            self.rechecks.forget(sockid)
            self.counters.vanished += 1
            self._event(
                "vanished", trigger, local=_endpoint(sockid.src, sockid.sport),
                remote=_endpoint(sockid.dst, sockid.dport), detail="no such socket",
            )
            return
        verdict = judge(msg, self.selection)
        if verdict is Verdict.DESTROY:
            self.rechecks.forget(sockid)
            self.act(msg, trigger)
            return
        if is_retryable(verdict, msg):
            # Key by the socket's own cookie from now on: a new socket on the same 4-tuple is
            # another socket, and its lookup answers ESTALE (None here).
            key = InetDiagSockId(
                family=msg.id.family, sport=msg.id.sport, dport=msg.id.dport,
                src=msg.id.src, dst=msg.id.dst, cookie=msg.id.cookie,
            )
            if key != sockid:
                self.rechecks.forget(sockid)
            if self.rechecks.schedule(key, self.clock()):
                return
        else:
            self.rechecks.forget(sockid)
        self.counters.skip(verdict.value)
        self._event("skip", trigger, msg, reason=verdict.value)

    def run_rechecks(self) -> None:
        """Look again at every socket whose recheck is due."""
        for key in self.rechecks.pop_due(self.clock()):
            assert isinstance(key, InetDiagSockId)
            self.counters.rechecks += 1
            self._look(key, "recheck")

    # -- sweeps (poll trigger, and recovery after an NFLOG overrun) ---------------------

    def sweep(self, trigger: str = "poll") -> None:
        """Dump all CLOSE_WAIT sockets once and act on the selected, drained ones.

        A socket skipped by a sweep is reported once, not on every sweep.
        """
        self.counters.sweeps += 1
        try:
            found = list(self.sockdiag.dump(states=state_mask(TcpState.CLOSE_WAIT)))
        except SockDiagError as exc:
            self._error(trigger, exc)
            return
        present: set[int] = set()
        for msg in found:
            verdict = judge(msg, self.selection)
            if verdict is Verdict.DESTROY:
                if self.dry_run:
                    present.add(msg.id.cookie)
                    if msg.id.cookie in self._seen_by_sweep:
                        continue
                self.act(msg, trigger)
                continue
            if verdict in (Verdict.OTHER_UID, Verdict.OTHER_PORT, Verdict.OTHER_ADDRESS):
                continue  # not ours: not even worth a line
            present.add(msg.id.cookie)
            if msg.id.cookie not in self._seen_by_sweep:
                self.counters.skip(verdict.value)
                self._event("skip", trigger, msg, reason=verdict.value)
        self._seen_by_sweep = present

    # -- loops --------------------------------------------------------------------------

    def step_nflog(self, listener: NflogListener, timeout: float | None) -> None:
        """Wait up to *timeout* seconds (None: until something happens) for logged FINs or a
        due recheck, and handle what is there. An overrun is reported and followed by a sweep."""
        due = self.rechecks.next_due()
        if due is not None:
            wait = max(0.0, due - self.clock())
            timeout = wait if timeout is None else min(timeout, wait)
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        ready = poller.poll(None if timeout is None else timeout * 1000.0)
        if ready:
            listener.set_nonblocking(True)
            while True:
                try:
                    packets = listener.receive()
                except NflogBufferOverrun as exc:
                    self.counters.overruns += 1
                    self._event("overrun", "nflog", detail=str(exc))
                    self.sweep("sweep")
                    continue
                except OSError as exc:
                    self._error("nflog", exc)
                    break
                if not packets:
                    break
                for packet in packets:
                    if packet.segment is not None:
                        self.on_fin(packet.segment)
        self.run_rechecks()

    def run_nflog(self, listener: NflogListener, *, tick: Callable[[], None] = lambda: None) -> None:
        """Serve NFLOG FINs until interrupted (an exception from a signal handler ends it).
        *tick* runs at least once a second (publishing counters)."""
        while True:
            self.step_nflog(listener, 1.0)
            tick()

    def run_poll(self, interval: float, *, tick: Callable[[], None] = lambda: None) -> None:
        """Sweep every *interval* seconds until interrupted."""
        next_at = self.clock()
        while True:
            self.sweep("poll")
            tick()
            next_at += interval
            delay = next_at - self.clock()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = self.clock()

