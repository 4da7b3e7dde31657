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
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halfclose.reap.decision import Rechecks, Selection, Verdict, is_retryable, judge
from halfclose.reap.metrics import LatencyHistogram
from halfclose.reap.nflog import NflogListener, TcpSegment
from halfclose.sockdiag.client import DestroyOutcome, SockDiag, SockDiagError, destroy_result
from halfclose.sockdiag.wire import (
    MSG_SOCKID,
    InetDiagMsg,
    InetDiagSockId,
    TcpState,
    decode_inet_diag_msg,
    exact_request,
    state_mask,
)

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
    reloads: int = 0
    #: Second and later looks at a socket flagged by a FIN (not yet CLOSE_WAIT, or data queued).
    rechecks: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    destroyed_by_uid: dict[int, int] = field(default_factory=dict)
    #: Skipped sockets by (reason, uid).
    skipped_by: dict[tuple[str, int], int] = field(default_factory=dict)

    def skip(self, reason: str, uid: int) -> None:
        """Count one socket of *uid* left alone for *reason*."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        key = (reason, uid)
        self.skipped_by[key] = self.skipped_by.get(key, 0) + 1

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready copy (uid keys as strings; skipped by uid as ``reason/uid`` keys)."""
        body = asdict(self)
        body["destroyed_by_uid"] = {str(k): v for k, v in self.destroyed_by_uid.items()}
        body["skipped_by"] = {f"{r}/{u}": v for (r, u), v in self.skipped_by.items()}
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
    ``overrun``. ``trigger``: ``nflog``, ``recheck``, ``poll``, ``sweep`` (after an overrun),
    ``start`` (the sweep at start-up) or ``reload`` (the sweep after a configuration reload).
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


#: Fields of ``struct inet_diag_msg`` the hot path reads from the reply bytes: ``idiag_rqueue,
#: idiag_wqueue, idiag_uid`` after the 4 header bytes, the 48-byte sockid and ``idiag_expires``;
#: the remote port (``idiag_dport``, network order) at byte 6.
_QUEUES_UID = struct.Struct("=III")
_RQUEUE_AT = 4 + 48 + 4
_UID = struct.Struct("=I")
_UID_AT = _RQUEUE_AT + 8
_PORT = struct.Struct("!H")
_CLOSE_WAIT = int(TcpState.CLOSE_WAIT)


def _plainly_doomed(raw: bytes, selection: Selection) -> bool:
    """Whether the ``inet_diag_msg`` bytes *raw* show, without decoding, a socket :func:`judge`
    would destroy: CLOSE_WAIT, drained, selected uid and port, and no networks to check."""
    if raw[1] != _CLOSE_WAIT or selection.networks:
        return False
    rqueue, wqueue, uid = _QUEUES_UID.unpack_from(raw, _RQUEUE_AT)
    ports = selection.ports
    return (uid in selection.uids and rqueue <= 1 and not wqueue
            and (not ports or _PORT.unpack_from(raw, 6)[0] in ports))


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
    socket flagged by a FIN is looked at again. With *dry_run* nothing is destroyed. *emit*
    receives every action (None: no events are built at all, the cheapest way to run).
    :attr:`selection` may be replaced between steps (a configuration reload).
    """

    #: Most FINs handled with one sock_diag request datagram.
    BATCH = 256

    def __init__(
        self,
        *,
        selection: Selection,
        sockdiag: SockDiag,
        emit: Callable[[ReapEvent], None] | None = None,
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
        self.latency = LatencyHistogram()
        self.rechecks = Rechecks(settle=settle)
        # Cookies already reported by a sweep (so that poll mode counts each socket once).
        self._seen_by_sweep: set[int] = set()
        self._poller: select.poll | None = None
        self._polled_fd = -1
        #: A descriptor that becomes readable when the loop should wake up at once (the read end
        #: of ``signal.set_wakeup_fd``); its bytes are drained and :attr:`woken` is set.
        self.wakeup_fd: int | None = None
        self.woken = False

    # -- events -------------------------------------------------------------------------

    def _event(self, action: str, trigger: str, msg: InetDiagMsg | None = None, **kw: object) -> None:
        if self.emit is None:
            return
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

    def destroy_requests(self, requests: list[bytes]) -> list[int]:
        """Send SOCK_DESTROY *requests* (by 4-tuple and cookie) in one datagram; errno of each."""
        return self.sockdiag.destroy_raw(requests)

    def act(self, msg: InetDiagMsg, trigger: str, since: float | None = None) -> None:
        """Destroy *msg* (already judged DESTROY), or report it in a dry run."""
        self.act_many([msg], trigger, [since])

    def act_many(self, msgs: list[InetDiagMsg], trigger: str, since: list[float | None]) -> None:
        """Destroy *msgs* (judged DESTROY) with one request datagram; *since* holds, per socket,
        the clock reading of its FIN's arrival (None: unknown) for the latency histogram."""
        raws = [bytes([m.idiag_family, m.idiag_state, 0, 0]) + m.id.encode() for m in msgs]
        self._destroy(raws, trigger, since, {i: m for i, m in enumerate(msgs)})

    def _destroy(self, raws: list[bytes], trigger: str, since: list[float | None],
                 decoded: dict[int, InetDiagMsg]) -> None:
        """Destroy the sockets whose replies (``inet_diag_msg`` bytes, or at least their first
        52 bytes: family, state and sockid with cookie) are *raws*; *decoded* holds the records
        already made of some of them (for events)."""
        if not raws:
            return
        if self.dry_run:
            for i in range(len(raws)):
                self.counters.would_destroy += 1
                self._event("would-destroy", trigger, self._record(raws, decoded, i))
            return
        try:
            codes = self.destroy_requests([exact_request(raw[0], raw[MSG_SOCKID]) for raw in raws])
        except SockDiagError as exc:
            self._error(trigger, exc)
            return
        self._account(raws, codes, trigger, since, decoded)

    def _account(self, raws: list[bytes], codes: list[int], trigger: str, since: list[float | None],
                 decoded: dict[int, InetDiagMsg]) -> None:
        """Count (and report) what the destroy answers *codes* of the sockets *raws* mean."""
        now = self.clock()
        counters, by_uid, latency = self.counters, self.counters.destroyed_by_uid, self.latency
        emit = self.emit is not None
        for i, code in enumerate(codes):
            if code == 0:
                counters.destroyed += 1
                msg = decoded.get(i)
                uid = msg.idiag_uid if msg is not None else _UID.unpack_from(raws[i], _UID_AT)[0]
                by_uid[uid] = by_uid.get(uid, 0) + 1
                at = since[i]
                if at is not None:
                    latency.observe(now - at)
                if emit:
                    self._event("destroy", trigger, self._record(raws, decoded, i))
                continue
            result = destroy_result(code)
            if result.outcome is DestroyOutcome.VANISHED:
                counters.vanished += 1
                self._event("vanished", trigger, self._record(raws, decoded, i), detail="socket gone before destroy")
            else:
                self._error(trigger, SockDiagError(f"sock_diag destroy: {os.strerror(code)}", code),
                            self._record(raws, decoded, i))

    def _record(self, raws: list[bytes], decoded: dict[int, InetDiagMsg], i: int) -> InetDiagMsg | None:
        """The record of reply *i* for an event (None when no one listens)."""
        if self.emit is None:
            return None
        msg = decoded.get(i)
        return msg if msg is not None else decode_inet_diag_msg(raws[i])

    # -- nflog trigger ------------------------------------------------------------------

    def on_fin(self, segment: TcpSegment) -> None:
        """Handle one logged FIN: look up the socket it was addressed to and decide."""
        if segment.is_fin:
            self.on_fins([segment.receiver_sockid()], self.clock())

    def on_fins(self, sockids: list[InetDiagSockId], at: float) -> None:
        """Handle FINs addressed to *sockids* that arrived at clock reading *at*."""
        self.on_fin_requests([exact_request(s.family, s.encode()) for s in sockids], at)

    def on_fin_requests(self, requests: list[bytes], at: float) -> None:
        """Handle FINs whose sockets' lookup requests (:func:`~.nflog.fin_lookup_request`) are
        *requests*; they arrived at clock reading *at*."""
        self.counters.fins_seen += len(requests)
        for start in range(0, len(requests), self.BATCH):
            chunk = requests[start : start + self.BATCH]
            self._look(chunk, [at] * len(chunk), "nflog", None)

    def _look(self, requests: list[bytes], since: list[float], trigger: str,
              keys: list[InetDiagSockId] | None) -> None:
        """Look the sockets up (one datagram), judge them, destroy the doomed (one datagram).

        A reply that is plainly a drained CLOSE_WAIT socket of a selected uid and port (and no
        networks to check) is judged from its bytes; every other one is decoded and judged by
        :func:`~.decision.judge`, and may be scheduled for a recheck (*keys*: the recheck keys of
        the requests, None for fresh FINs).
        """
        try:
            found = self.sockdiag.lookup_raw(requests)
        except SockDiagError as exc:
            for k in keys or ():
                self.rechecks.forget(k)
            self._error(trigger, exc)
            return
        self._judge(requests, found, since, trigger, keys)

    def _one_fin(self, request: bytes, at: float) -> None:
        """One FIN on its own (a steady rate, no one listening to events): :meth:`_look`'s
        decisions on the shortest path."""
        counters = self.counters
        counters.fins_seen += 1
        try:
            raw = self.sockdiag.lookup_one(request)
        except SockDiagError as exc:
            self._error("nflog", exc)
            return
        if raw is None or not _plainly_doomed(raw, self.selection):
            self._judge([request], [raw], [at], "nflog", None)
            return
        try:
            codes = self.destroy_requests([exact_request(raw[0], raw[MSG_SOCKID])])
        except SockDiagError as exc:
            self._error("nflog", exc)
            return
        if codes[0] or self.emit is not None:
            self._account([raw], codes, "nflog", [at], {})
            return
        counters.destroyed += 1
        by_uid = counters.destroyed_by_uid
        uid = _UID.unpack_from(raw, _UID_AT)[0]
        by_uid[uid] = by_uid.get(uid, 0) + 1
        self.latency.observe(self.clock() - at)

    def _judge(self, requests: list[bytes], found: list[bytes | None], since: list[float], trigger: str,
               keys: list[InetDiagSockId] | None) -> None:
        rechecks = self.rechecks
        doomed: list[bytes] = []
        doomed_since: list[float | None] = []
        decoded: dict[int, InetDiagMsg] = {}
        selection = self.selection
        for i, raw in enumerate(found):
            key: InetDiagSockId | None = keys[i] if keys is not None else None
            if raw is None:
                if key is not None:
                    rechecks.forget(key)
                self.counters.vanished += 1
                if self.emit is not None:
                    sid = key if key is not None else InetDiagSockId.decode(requests[i][0], requests[i], 8)
                    self._event("vanished", trigger, local=_endpoint(sid.src, sid.sport),
                                remote=_endpoint(sid.dst, sid.dport), detail="no such socket")
                continue
            if _plainly_doomed(raw, selection):
                if key is not None:
                    rechecks.forget(key)
                doomed.append(raw)
                doomed_since.append(since[i])
                continue
            msg = decode_inet_diag_msg(raw)
            verdict = judge(msg, selection)
            if verdict is Verdict.DESTROY:
                if key is not None:
                    rechecks.forget(key)
                decoded[len(doomed)] = msg
                doomed.append(raw)
                doomed_since.append(since[i])
                continue
            if is_retryable(verdict, msg):
                # Key by the socket's own cookie from now on: a new socket on the same 4-tuple
                # is another socket, and its lookup answers ESTALE (None here).
                cookie_key = InetDiagSockId(
                    family=msg.id.family, sport=msg.id.sport, dport=msg.id.dport,
                    src=msg.id.src, dst=msg.id.dst, cookie=msg.id.cookie,
                )
                if key is not None and key != cookie_key:
                    rechecks.forget(key)
                if rechecks.schedule(cookie_key, self.clock()):
                    continue
            elif key is not None:
                rechecks.forget(key)
            self.counters.skip(verdict.value, msg.idiag_uid)
            self._event("skip", trigger, msg, reason=verdict.value)
        self._destroy(doomed, trigger, doomed_since, decoded)

    def run_rechecks(self) -> None:
        """Look again at every socket whose recheck is due."""
        due = self.rechecks.pop_due(self.clock())
        if not due:
            return
        keys: list[InetDiagSockId] = []
        since: list[float] = []
        for key in due:
            assert isinstance(key, InetDiagSockId)
            keys.append(key)
            since.append(self.rechecks.started(key))
        self.counters.rechecks += len(keys)
        for start in range(0, len(keys), self.BATCH):
            chunk = keys[start : start + self.BATCH]
            self._look([exact_request(k.family, k.encode()) for k in chunk], since[start : start + self.BATCH],
                       "recheck", chunk)

    # -- sweeps (poll trigger, and recovery after an NFLOG overrun) ---------------------

    def sweep(self, trigger: str = "poll") -> None:
        """Dump all CLOSE_WAIT sockets once and act on the selected, drained ones.

        The selected remote ports are filtered in the kernel (inet_diag bytecode). A socket
        skipped by a sweep is reported once, not on every sweep.
        """
        self.counters.sweeps += 1
        selection = self.selection
        try:
            found = list(self.sockdiag.dump(states=state_mask(TcpState.CLOSE_WAIT), dports=selection.ports))
        except SockDiagError as exc:
            self._error(trigger, exc)
            return
        present: set[int] = set()
        doomed: list[InetDiagMsg] = []
        for msg in found:
            verdict = judge(msg, selection)
            if verdict is Verdict.DESTROY:
                if self.dry_run:
                    present.add(msg.id.cookie)
                    if msg.id.cookie in self._seen_by_sweep:
                        continue
                doomed.append(msg)
                continue
            if verdict in (Verdict.OTHER_UID, Verdict.OTHER_PORT, Verdict.OTHER_ADDRESS):
                continue  # not ours: not even worth a line
            present.add(msg.id.cookie)
            if msg.id.cookie not in self._seen_by_sweep:
                self.counters.skip(verdict.value, msg.idiag_uid)
                self._event("skip", trigger, msg, reason=verdict.value)
        for start in range(0, len(doomed), self.BATCH):
            chunk = doomed[start : start + self.BATCH]
            self.act_many(chunk, trigger, [None] * len(chunk))
        self._seen_by_sweep = present

    # -- loops --------------------------------------------------------------------------

    def step_nflog(self, listener: NflogListener, timeout: float | None) -> None:
        """Wait up to *timeout* seconds (None: until something happens) for logged FINs or a
        due recheck, and handle everything queued: the FINs read are looked up and destroyed in
        batches. An overrun is reported and followed by a sweep.

        With nothing to recheck this waits in a blocking read of the NFLOG socket (one system
        call per FIN at a steady rate; a signal is seen by the next step); otherwise in poll(2).
        """
        due = self.rechecks.next_due()
        if due is not None:
            wait = max(0.0, due - self.clock())
            timeout = wait if timeout is None else min(timeout, wait)
        if due is None:
            try:
                requests, overrun = listener.wait(1.0 if timeout is None else timeout)
            except OSError as exc:
                self._error("nflog", exc)
                return
            if len(requests) == 1 and self.emit is None and not self.dry_run:
                self._one_fin(requests[0], self.clock())
            elif requests:
                self.on_fin_requests(requests, self.clock())
            if overrun:
                self._overrun()
            return
        if self._poller is None or self._polled_fd != listener.fileno():
            self._poller = select.poll()
            self._polled_fd = listener.fileno()
            self._poller.register(self._polled_fd, select.POLLIN)
            if self.wakeup_fd is not None:
                self._poller.register(self.wakeup_fd, select.POLLIN)
        ready = self._poller.poll(None if timeout is None else timeout * 1000.0)
        if self.wakeup_fd is not None and any(fd == self.wakeup_fd for fd, _ in ready):
            self._drain_wakeup()
        if any(fd == self._polled_fd for fd, _ in ready):
            at = self.clock()
            try:
                requests, overrun = listener.drain()
            except OSError as exc:
                self._error("nflog", exc)
                requests, overrun = [], False
            if requests:
                self.on_fin_requests(requests, at)
            if overrun:
                self._overrun()
        if self.rechecks:
            self.run_rechecks()

    def _overrun(self) -> None:
        self.counters.overruns += 1
        self._event("overrun", "nflog", detail="NFLOG receive buffer overrun: packets were lost")
        self.sweep("sweep")

    def _drain_wakeup(self) -> None:
        assert self.wakeup_fd is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self.wakeup_fd, 512):
                pass
        self.woken = True

    def sleep(self, seconds: float) -> None:
        """Wait *seconds*, or less when :attr:`wakeup_fd` becomes readable."""
        if self.wakeup_fd is None:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([self.wakeup_fd], [], [], seconds)
        if ready:
            self._drain_wakeup()

    def run_nflog(
        self, listener: NflogListener | Callable[[], NflogListener], *, tick: Callable[[], float | None] = lambda: None
    ) -> None:
        """Serve NFLOG FINs until interrupted (an exception from a signal handler ends it).

        *listener* may be a callable returning the current listener (a reload may replace it).
        *tick* runs after every wake-up and at least once a second; it may return the longest
        wait it allows before it runs again.
        """
        current = listener if callable(listener) else (lambda: listener)
        wait: float | None = 1.0
        while True:
            self.step_nflog(current(), 1.0 if wait is None else min(1.0, wait))
            wait = tick()

    def run_poll(
        self, interval: float | Callable[[], float], *, tick: Callable[[], float | None] = lambda: None
    ) -> None:
        """Sweep every *interval* seconds until interrupted (*interval* may be a callable, read
        after every sweep)."""
        every = interval if callable(interval) else (lambda: interval)
        next_at = self.clock()
        while True:
            self.sweep("poll")
            tick()
            next_at += every()
            delay = next_at - self.clock()
            if delay > 0:
                self.sleep(delay)
            else:
                next_at = self.clock()
