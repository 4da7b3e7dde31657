"""Closing pooled connections the moment the server's FIN (or a reset) arrives, or at a deadline.

An idle keep-alive connection is registered here when it goes back to its pool and removed when it
is taken out again. While it sits in the pool, an ``epoll`` set watches its socket for
``EPOLLRDHUP`` (the peer's FIN, seen without reading anything), ``EPOLLHUP`` and ``EPOLLERR`` (a
reset). When one fires, the connection's callback runs at once: it closes the connection, so that
the socket never waits in CLOSE_WAIT for the next request to look at it, and tells the guard the
idle age at which the server closed.

Each time it is pooled a registration may also carry a deadline (the retirement timer, rule 4 of
:mod:`._policy`): when it passes with the connection still pooled, its ``on_expire`` callback runs
instead, which closes the connection before the server's idle timer would. The thread waits in
``epoll`` no longer than the nearest deadline (an ``eventfd`` wakes it when a nearer one is
registered); the event loop schedules each deadline with ``call_later``. Checkout clears it.

Who waits on the ``epoll`` set:

* :class:`ThreadWatcher`: a thread, for blocking clients (urllib3, requests, httpx). It starts with
  the first registration and ends once nothing has been pooled for ``linger`` seconds (so that a
  busy client does not start a thread per request), or at once when the last client stops it.
* :class:`LoopWatcher`: the asyncio event loop the client runs on (the ``epoll`` descriptor is
  itself pollable, so the loop watches it with ``add_reader``); no thread.

A connection is registered once (:meth:`Watcher.watch`, when it first goes back to its pool) and
stays registered until it is closed (:meth:`Watcher.unwatch`); between requests it only moves in
and out of the pool (:meth:`Watcher.repool`, :meth:`Watcher.checkout`), which costs no change to
the ``epoll`` set. A FIN that arrives while the connection is out (carrying a request) is noted,
and the connection is closed when it comes back.

Checking out and firing exclude each other: :meth:`Watcher.checkout` returns False when the
callback has already run (the connection is closed), and a callback never runs after a checkout.

The waiting side may lag behind the kernel (a thread waits for the interpreter lock, a loop for its
turn), so checkout does not trust it alone: a second ``epoll`` set, which nobody waits on, holds
every registered socket for input too (level-triggered: what is readable now), and one
non-blocking ``epoll_wait`` on it at checkout tells which pooled sockets hold anything unread: a
FIN, a reset, or bytes nobody asked for (a pooled connection has read its last response whole).
Those are :attr:`Watch.seen`; the guard looks closely only at them.

Fork safety: a child process gets an empty watcher (the parent's ``epoll`` set and thread are not
its own); the pooled connections it inherited are still checked before reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CLOSED", "LoopWatcher", "ThreadWatcher", "Watch", "Watcher"]

log = logging.getLogger("halfclose.client")

_EVENTS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_LOOK = select.EPOLLIN | select.EPOLLRDHUP
#: Bits of :attr:`Watch.seen` that mean the server closed or reset the connection.
CLOSED = _EVENTS


@dataclass(eq=False, kw_only=True, slots=True)
class Watch:
    """One registered connection: its descriptor, and what to run when the server closes it.

    Attributes:
        active: registered in the ``epoll`` sets (until the connection closes or fires).
        pooled: idle in its pool now.
        fired: the server closed it while pooled and *on_close* ran.
        seen: ``epoll`` events that arrived while it was pooled (0: nothing; :data:`CLOSED` bits: a
            FIN or a reset; ``EPOLLIN`` alone: bytes), read at checkout.
        closed_out: the server closed it while it was out of the pool.
        since: when it last went back to its pool (the guard's clock).
    """

    fd: int
    on_close: Callable[[], None]
    active: bool = True
    pooled: bool = True
    fired: bool = False
    seen: int = 0
    closed_out: bool = False
    since: float = 0.0
    watcher: Watcher | None = None
    #: ``time.monotonic()`` at which *on_expire* runs if the connection is still pooled, or None.
    deadline: float | None = None
    #: What runs at the deadline (given once, at registration or at a pooling, and kept).
    on_expire: Callable[[], None] | None = None
    timer: asyncio.TimerHandle | None = None
    #: The guard's cache: the retirement age it computed for this connection, and the guard's
    #: ``timeouts_version`` then (it is computed again once that changes).
    retire_in: float | None = None
    retire_version: int = -1
    #: The guard's cache for the look before reuse: the idle age from which it refuses this
    #: connection, and the guard's ``timeouts_version`` then (see :meth:`Guard.may_reuse`).
    limit: float = 0.0
    limit_version: int = -1


@dataclass(eq=False)
class Watcher:
    """The ``epoll`` set and its registrations; subclasses decide who waits on it."""

    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)
    _epoll: select.epoll | None = field(default=None, init=False, repr=False)
    _look: select.epoll | None = field(default=None, init=False, repr=False)
    _watches: dict[int, Watch] = field(default_factory=dict, init=False, repr=False)
    _pooled: int = field(default=0, init=False, repr=False)
    _poolings: int = field(default=0, init=False, repr=False)
    _stopped: bool = field(default=False, init=False, repr=False)
    #: The waiting side is to be started at the next pooling (:meth:`_started`).
    _start: bool = field(default=True, init=False, repr=False)

    def __post_init__(self) -> None:
        _after_fork_reset(self)

    # -- registrations --------------------------------------------------------------------------

    def watch(
        self,
        fd: int,
        on_close: Callable[[], None],
        *,
        since: float = 0.0,
        expire_in: float | None = None,
        on_expire: Callable[[], None] | None = None,
    ) -> Watch | None:
        """Watch descriptor *fd* of a connection that just went back to its pool for the first time.

        With *expire_in* and *on_expire*: run *on_expire* instead once *expire_in* seconds have
        passed with the connection still pooled and the server's close not seen.

        Returns the registration to pass to :meth:`checkout`, :meth:`repool` and :meth:`unwatch`,
        or None when it cannot be watched (the watcher was stopped, or the descriptor is not a
        socket epoll accepts).
        """
        with self._lock:
            if self._stopped:
                return None
            if self._epoll is None:
                self._epoll = select.epoll()
                self._look = select.epoll()
                self._opened(self._epoll)
            assert self._look is not None
            old = self._watches.get(fd)
            if old is not None:  # the descriptor was closed and reused without an unwatch
                self._drop(old)
            try:
                self._epoll.register(fd, _EVENTS)
            except OSError:
                return None
            try:
                self._look.register(fd, _LOOK)
            except OSError:
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)
                return None
            w = Watch(fd=fd, on_close=on_close, since=since, on_expire=on_expire)
            self._watches[fd] = w
            self._pooled += 1
            self._poolings += 1
            if self._start:
                self._started()
            if expire_in is not None:
                self._arm(w, expire_in)
            return w

    def _arm(self, w: Watch, expire_in: float) -> None:
        """Give pooled *w* its deadline, *expire_in* seconds from now, if it has an ``on_expire``
        (lock held)."""
        if w.on_expire is not None:
            w.deadline = time.monotonic() + max(expire_in, 0.0)
            self._scheduled(w)

    def _disarm(self, w: Watch) -> None:
        """*w* leaves the pool or closes: no deadline (lock held)."""
        w.deadline = None
        if w.timer is not None:
            w.timer.cancel()
            w.timer = None

    def repool(
        self,
        w: Watch,
        since: float = 0.0,
        expire_in: float | None = None,
        on_expire: Callable[[], None] | None = None,
    ) -> bool:
        """Registered connection *w* goes back to its pool again (no change to the ``epoll`` sets).

        With *expire_in*: its deadline, as for :meth:`watch` (*on_expire*, if given, replaces the
        one it has). Returns False when it is no longer registered (then :meth:`watch` it anew), or
        when the server closed it while it was out (its callback has run now). Called once per
        request: the arguments are positional-or-keyword (a call with keywords costs more).
        """
        with self._lock:
            if not w.active or self._watches.get(w.fd) is not w:
                return False
            if w.pooled:
                return True
            w.since = since
            if w.closed_out:  # closed while it carried the last exchange: close it now
                self._fire(w, w.on_close, "the server had closed")
                return False
            w.pooled = True
            w.seen = 0
            self._pooled += 1
            self._poolings += 1
            if self._start:
                self._started()
            if on_expire is not None:
                w.on_expire = on_expire
            if expire_in is not None:
                self._arm(w, expire_in)
            return True

    def checkout(self, w: Watch | None) -> bool:
        """The connection leaves the pool (it stays registered); :attr:`Watch.seen` says what arrived.

        Returns False when the server's close was seen first (the callback has run, the
        connection is closed), True otherwise.
        """
        if w is None:
            return True
        with self._lock:  # one lock, one epoll_wait and no other call while nothing arrived
            if w.fired:
                return False
            if w.pooled:
                look = self._look
                if look is not None:
                    try:
                        events = look.poll(0)
                    except (OSError, ValueError):
                        events = []
                    if events:
                        self._note(events)
                w.pooled = False
                self._pooled -= 1
                if w.deadline is not None or w.timer is not None:
                    self._disarm(w)
            return True

    def unwatch(self, w: Watch | None) -> None:
        """The connection is closing: forget it (call while its descriptor is still open)."""
        if w is None:
            return
        with self._lock:
            if w.active and self._watches.get(w.fd) is w:
                self._drop(w)

    def pooled(self) -> int:
        """How many connections are watched in their pools now."""
        with self._lock:
            return self._pooled

    def _drop(self, w: Watch) -> None:
        """Forget *w* and take its descriptor out of both sets (lock held)."""
        del self._watches[w.fd]
        w.active = False
        self._disarm(w)
        if w.pooled:
            w.pooled = False
            self._pooled -= 1
        for ep in (self._epoll, self._look):
            if ep is not None:
                with contextlib.suppress(OSError):
                    ep.unregister(w.fd)

    def _note(self, events: list[tuple[int, int]]) -> None:
        """What the look at checkout found (which registered sockets hold anything unread; lock
        held): noted on pooled connections; a close of one that is out (carrying an exchange)
        closes it when it comes back."""
        for fd, mask in events:
            w = self._watches.get(fd)
            if w is None:
                continue
            if w.pooled:
                w.seen |= mask
            elif mask & CLOSED:
                w.closed_out = True

    def _fire(self, w: Watch, callback: Callable[[], None], what: str) -> None:
        """Forget pooled (or returning) *w* and run *callback* (lock held); it never runs twice."""
        self._drop(w)
        w.fired = True
        try:
            callback()
        except Exception:  # a callback must not kill the watcher; it is a defect: log it
            log.exception("closing a connection %s failed", what)

    def _dispatch(self, timeout: float) -> int:
        """Wait up to *timeout* seconds for closes and run their callbacks; return how many fired."""
        epoll = self._epoll
        if epoll is None:
            return 0
        try:
            events = epoll.poll(timeout)
        except (OSError, ValueError):  # closed under us (stop, fork)
            return 0
        fired = 0
        for fd, _mask in events:
            if self._woken(fd):
                continue
            with self._lock:
                w = self._watches.get(fd)
                if w is None or not w.active or self._epoll is not epoll:
                    continue
                if not w.pooled:  # out carrying an exchange: close it when it comes back
                    w.closed_out = True
                    with contextlib.suppress(OSError):
                        epoll.unregister(fd)  # level-triggered: it would fire again and again
                    continue
                self._fire(w, w.on_close, "the server had closed")
                fired += 1
        return fired

    def _expire(self, w: Watch) -> bool:
        """Run *w*'s ``on_expire`` if it is still pooled and its deadline has passed."""
        with self._lock:
            if not w.active or not w.pooled or w.on_expire is None or w.deadline is None \
                    or self._watches.get(w.fd) is not w:
                return False
            if time.monotonic() < w.deadline:
                return False
            self._fire(w, w.on_expire, "at its deadline")
            return True

    def _expire_due(self) -> None:
        """Run the callbacks of every deadline that has passed."""
        now = time.monotonic()
        with self._lock:
            due = [w for w in self._watches.values() if w.deadline is not None and w.deadline <= now]
        for w in due:
            self._expire(w)

    def _nearest(self) -> float | None:
        """The nearest deadline of the pooled registrations (lock held), or None."""
        return min((w.deadline for w in self._watches.values() if w.deadline is not None), default=None)

    def stop(self) -> None:
        """Stop watching: forget every registration and release the ``epoll`` set."""
        with self._lock:
            self._stopped = True
            for w in self._watches.values():
                w.active = False
                w.pooled = False
                self._disarm(w)
            self._watches.clear()
            self._pooled = 0
            epoll, self._epoll = self._epoll, None
            look, self._look = self._look, None
        if look is not None:
            look.close()
        if epoll is not None:
            self._closing(epoll)
            epoll.close()

    # -- hooks for the waiting side (called with the lock held, except _closing) --------------

    def _opened(self, epoll: select.epoll) -> None:
        pass

    def _started(self) -> None:
        """Start the waiting side (lock held); called at a pooling while :attr:`_start` is set."""
        self._start = False

    def _scheduled(self, w: Watch) -> None:
        pass

    def _woken(self, fd: int) -> bool:
        return False

    def _closing(self, epoll: select.epoll) -> None:
        pass

    def _forked(self) -> None:
        self._lock = threading.RLock()
        self._watches = {}
        self._pooled = 0
        for ep in (self._epoll, self._look):  # the parent's sets: drop our references, nothing else
            if ep is not None:
                with contextlib.suppress(OSError):
                    ep.close()
        self._epoll = self._look = None


@dataclass(eq=False)
class ThreadWatcher(Watcher):
    """A watcher whose ``epoll`` set a thread waits on (see the module docstring).

    Attributes:
        linger: seconds with nothing pooled after which the thread ends.
    """

    linger: float = 1.0
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _wake: int = field(default=-1, init=False, repr=False)
    #: ``time.monotonic()`` by which the thread's wait ends by itself.
    _wake_at: float = field(default=0.0, init=False, repr=False)

    def _started(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="halfclose-fin-watcher", daemon=True)
            self._thread.start()
        self._start = False

    def running(self) -> bool:
        """Whether the thread is alive now."""
        with self._lock:
            thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self) -> None:
        me = threading.current_thread()
        empty_since: float | None = None
        poolings = -1
        while True:
            self._expire_due()
            with self._lock:
                if self._thread is not me or self._epoll is None:
                    return
                now, nearest = time.monotonic(), self._nearest()
                if self._pooled or self._poolings != poolings:
                    empty_since = None
                    poolings = self._poolings
                else:
                    empty_since = now if empty_since is None else empty_since
                    if now - empty_since >= self.linger:
                        self._thread = None
                        self._start = True
                        return
                wait = self.linger if nearest is None else min(self.linger, max(nearest - now, 0.0))
                self._wake_at = now + wait
            self._dispatch(wait)

    def _scheduled(self, w: Watch) -> None:
        # Lock held. A deadline nearer than the end of the thread's wait wakes it to wait less.
        if w.deadline is not None and w.deadline < self._wake_at and self._wake >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(self._wake, 1)

    def _woken(self, fd: int) -> bool:
        if fd != self._wake:
            return False
        with contextlib.suppress(OSError):
            os.eventfd_read(fd)
        return True

    def _opened(self, epoll: select.epoll) -> None:
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        epoll.register(self._wake, select.EPOLLIN)

    def _closing(self, epoll: select.epoll) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._start = True
        wake, self._wake = self._wake, -1
        if wake >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(wake, 1)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        if wake >= 0:
            os.close(wake)

    def _forked(self) -> None:
        super()._forked()
        self._thread = None
        self._start = True
        if self._wake >= 0:
            with contextlib.suppress(OSError):
                os.close(self._wake)
        self._wake = -1


@dataclass(eq=False)
class LoopWatcher(Watcher):
    """A watcher whose ``epoll`` set the asyncio event loop *loop* watches (no thread)."""

    loop: asyncio.AbstractEventLoop | None = None

    def _opened(self, epoll: select.epoll) -> None:
        assert self.loop is not None
        self.loop.add_reader(epoll.fileno(), self._dispatch, 0)

    def _scheduled(self, w: Watch) -> None:
        assert self.loop is not None and w.deadline is not None
        w.timer = self.loop.call_later(max(w.deadline - time.monotonic(), 0.0), self._expire_later, w)

    def _expire_later(self, w: Watch) -> None:
        # The loop's clock may run a hair ahead of time.monotonic(): try again if it did.
        if w.active and not self._expire(w) and w.deadline is not None and w.active:
            assert self.loop is not None
            w.timer = self.loop.call_later(max(w.deadline - time.monotonic(), 0.001), self._expire_later, w)

    def _closing(self, epoll: select.epoll) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(Exception):
                loop.remove_reader(epoll.fileno())

    def _forked(self) -> None:
        super()._forked()
        self._stopped = True  # the loop belongs to the parent


_ALL: weakref.WeakSet[Watcher] = weakref.WeakSet()
_FORK_HOOK = threading.Lock()
_HOOKED: list[bool] = []


def _after_fork_reset(w: Watcher) -> None:
    with _FORK_HOOK:
        _ALL.add(w)
        if not _HOOKED:
            os.register_at_fork(after_in_child=_reset_in_child)
            _HOOKED.append(True)


def _reset_in_child() -> None:
    for w in list(_ALL):
        w._forked()
