"""The reaper as a long-running service: set-up, serving, reload, clean-up (the I/O around the agent).

Order of set-up (so that ``READY=1`` means "covered"): the sock_diag socket and its SOCK_DESTROY
probe; the NFLOG listener (a group another listener holds fails before any rule is touched); the
metrics listener; the rules (replacing, atomically, any set an earlier run left behind after a
crash: the NFLOG group is exclusive, so no other reaper of this namespace can own them); one sweep
of what is already in CLOSE_WAIT; then ``READY=1``.

A reload (SIGHUP) builds what changed next to what runs, then switches: a new NFLOG listener is
bound before the old one is drained and closed, a new metrics listener started before the old one
stops, and the rules are replaced in one transaction per table (nftables: one for all), so at
every moment either the old or the new rules tag connections and log FINs, and FINs logged
meanwhile wait in the listener's queue. A sweep after the switch catches sockets of newly added
uids whose FIN came before their connection was tagged. If anything fails, the running
configuration stays as it was.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from halfclose import __version__
from halfclose.errors import EnvironmentProblem, HalfcloseError
from halfclose.netfilter import Backend, Policy, Strategy, apply, remove, status
from halfclose.netfilter.policy import DEFAULT_PORTS
from halfclose.reap.agent import Reaper, ReapEvent, StateFile, netns_inode, state_dir
from halfclose.reap.config import ConfigFile, ReapSettings, merge, parse_config, resolve_packages
from halfclose.reap.decision import Selection
from halfclose.reap.metrics import MetricsAddress, ReaperCollector, serve
from halfclose.reap.nflog import NflogListener
from halfclose.reap.sdnotify import Notifier
from halfclose.reap.watch import pid_alive
from halfclose.sockdiag.client import SockDiag
from halfclose.sockdiag.wire import InetDiagSockId, TcpState, state_mask

__all__ = ["Service", "load_settings", "remove_stale_state", "systemd_unit"]

UNIT_FILE = "halfclose-reap.service"


def systemd_unit(exec_start: str) -> str:
    """The unit file shipped with the package, with ``ExecStart=`` running *exec_start*."""
    text = resources.files("halfclose.reap").joinpath(UNIT_FILE).read_text(encoding="utf-8")
    return text.replace("ExecStart=/usr/local/bin/halfclose ", f"ExecStart={exec_start} ")


def load_settings(config: Path | None, overrides: ConfigFile) -> ReapSettings:
    """Defaults, then the TOML file *config* (if any), then *overrides*; packages resolved to uids.

    Raises:
        InputError: the file cannot be read or holds a bad value; a package is not listed.
        UsageError: no uid is selected.
    """
    layers: list[ConfigFile] = []
    if config is not None:
        try:
            text = config.read_text(encoding="utf-8")
        except OSError as exc:
            from halfclose.errors import InputError

            raise InputError(f"cannot read config file {config}: {exc.strerror}") from None
        layers.append(parse_config(text, str(config)))
    layers.append(overrides)
    settings = merge(*layers)
    packages = None
    if settings.packages:
        with contextlib.suppress(OSError):
            packages = Path(settings.packages_list).read_text(encoding="utf-8", errors="replace")
    return resolve_packages(settings, packages)


def remove_stale_state(directory: Path, netns: int) -> list[int]:
    """Delete the state files of reapers of namespace *netns* that are no longer running (killed
    without clean-up); return their pids."""
    dead = []
    for path in sorted(directory.glob("*.json")):
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        pid = body.get("pid") if isinstance(body, dict) else None
        if isinstance(pid, int) and body.get("netns_inode") == netns and not pid_alive(pid):
            with contextlib.suppress(OSError):
                path.unlink()
            dead.append(pid)
    return dead


def _policy(settings: ReapSettings) -> Policy | None:
    if settings.trigger != "nflog" or settings.no_rules:
        return None
    # The rules tag the app's connections to these ports; with no ports the rules' default
    # ports are tagged while the reaper itself accepts any port.
    return Policy(uids=settings.uids, ports=settings.ports or DEFAULT_PORTS, strategy=Strategy.NFLOG,
                  nflog_group=settings.nflog_group)


def _emitter(log: str) -> Callable[[ReapEvent], None] | None:
    if log == "json":
        return lambda event: print(event.to_json(), flush=True)
    if log == "text":
        def text(event: ReapEvent) -> None:
            extra = f" ({event.reason or event.detail})" if event.reason or event.detail else ""
            who = f" uid {event.uid}" if event.uid is not None else ""
            print(f"halfclose reap: {event.action}{who} {event.local or ''} -> {event.remote or ''}"
                  f" {event.state or ''}{extra}", file=sys.stderr, flush=True)
        return text
    return None


def describe(settings: ReapSettings, policy: Policy | None, listener: NflogListener | None) -> str:
    """The settings in one line (for ``ready`` and ``reloaded``)."""
    what = f"trigger {settings.trigger}" + (
        f", NFLOG group {settings.nflog_group}" if listener is not None else f", every {settings.interval:g} s"
    )
    ports = ",".join(map(str, sorted(set(settings.ports))))
    if not ports:
        tagged = ",".join(map(str, policy.ports)) if policy is not None else ""
        ports = f"any (rules tag {tagged})" if tagged else "any"
    metrics = f"; metrics {settings.metrics}" if settings.metrics is not None else ""
    return (f"{what}; uids {','.join(map(str, settings.uids))}; ports {ports}{metrics}"
            f"{'; dry run' if settings.dry_run else ''}")


class Service:
    """One reaper process: owns its sockets, listener, rules, metrics listener and state file.

    Use as a context manager: leaving it removes the rules and the state file whatever happened.
    *reload_settings* reads the configuration again (for :meth:`reload`).
    """

    def __init__(self, settings: ReapSettings, *, reload_settings: Callable[[], ReapSettings],
                 say: Callable[[str], None]) -> None:
        self.settings = settings
        self._reload_settings = reload_settings
        self.say = say
        self.notifier = Notifier()
        self.stack = contextlib.ExitStack()
        self.listener: NflogListener | None = None
        self.policy: Policy | None = None
        self.backend: Backend | None = None
        self._stop_metrics: Callable[[], None] | None = None
        self._metrics_at: MetricsAddress | None = None
        self._scrape_lock = threading.Lock()
        self.reload_requested = False
        try:
            self.sd = self.stack.enter_context(SockDiag())
            self._scrape_sd = self.stack.enter_context(SockDiag())
            # Probe: a destroy for a socket that cannot exist answers ENOENT on a kernel with
            # SOCK_DESTROY and EOPNOTSUPP without it (raised as EnvironmentProblem).
            any4 = ipaddress.IPv4Address(0)
            self.sd.destroy(InetDiagSockId(family=socket.AF_INET, sport=0, dport=0, src=any4, dst=any4))
        except BaseException:
            self.stack.close()
            raise
        self.reaper = Reaper(selection=self._selection(settings), sockdiag=self.sd, emit=_emitter(settings.log),
                             dry_run=settings.dry_run, settle=settings.settle)
        self.netns = netns_inode()
        self.state = StateFile(path=state_dir() / f"{os.getpid()}.json", header={})
        self._set_header()
        self._last_publish = 0.0

    # -- pieces ---------------------------------------------------------------------------

    @staticmethod
    def _selection(settings: ReapSettings) -> Selection:
        return Selection(uids=frozenset(settings.uids), ports=frozenset(settings.ports),
                         networks=settings.addresses)

    def _set_header(self) -> None:
        s = self.settings
        self.state.header = {
            "pid": os.getpid(), "netns_inode": self.netns, "uids": list(s.uids), "ports": sorted(s.ports),
            "trigger": s.trigger, "dry_run": s.dry_run, "started": self.state.header.get("started", time.time()),
        }

    def _close_wait_by_uid(self) -> dict[int, int]:
        out: dict[int, int] = {}
        with self._scrape_lock:
            for msg in self._scrape_sd.dump(states=state_mask(TcpState.CLOSE_WAIT)):
                out[msg.idiag_uid] = out.get(msg.idiag_uid, 0) + 1
        return out

    def _info(self) -> dict[str, str]:
        return {"version": __version__, "trigger": self.settings.trigger,
                "backend": str(self.backend) if self.backend is not None else "none"}

    def _start_metrics(self, address: MetricsAddress) -> Callable[[], None]:
        collector = ReaperCollector(counters=lambda: self.reaper.counters, latency=lambda: self.reaper.latency,
                                    close_wait=self._close_wait_by_uid, info=self._info)
        return serve(collector, address)

    # -- set-up, reload, clean-up ---------------------------------------------------------

    def __enter__(self) -> Service:
        self.stack.callback(self._teardown)
        try:
            self._switch(self.settings, first=True)
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.notifier.stopping()
        self.stack.close()

    def _teardown(self) -> None:
        try:
            if self.backend is not None:
                remove(backend=self.backend)
                self.backend = None
        finally:
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            if self._stop_metrics is not None:
                self._stop_metrics()
                self._stop_metrics = None
            self.state.remove()
            self.notifier.close()

    def _switch(self, new: ReapSettings, *, first: bool) -> None:
        """Build what *new* needs next to what runs, then switch to it (see the module doc)."""
        old = self.settings
        new_listener: NflogListener | None = None
        new_stop: Callable[[], None] | None = None
        wants_listener = new.trigger == "nflog"
        if wants_listener and (self.listener is None or self.listener.group != new.nflog_group):
            new_listener = NflogListener(new.nflog_group)
        try:
            if new.metrics != self._metrics_at and new.metrics is not None:
                new_stop = self._start_metrics(new.metrics)
            policy = _policy(new)
            backend = self.backend
            if policy is not None:
                if first:
                    self._take_over(Backend(new.backend))
                chosen = Backend(new.backend) if backend is None or new.backend != old.backend else backend
                used = apply(policy, backend=chosen)
                if backend is not None and used is not backend:
                    remove(backend=backend)
                backend = used
        except BaseException:
            if new_listener is not None:
                new_listener.close()
            if new_stop is not None:
                new_stop()
            raise
        # Switch: from here on nothing fails but the kernel's answers, which the reaper counts.
        self.settings, self.policy = new, policy
        reaper = self.reaper
        reaper.selection = self._selection(new)
        reaper.rechecks.settle = new.settle
        reaper.dry_run = new.dry_run
        reaper.emit = _emitter(new.log)
        if new_listener is not None or not wants_listener:
            previous, self.listener = self.listener, new_listener if wants_listener else None
            if previous is not None:
                requests, _overrun = previous.drain()  # FINs logged before the switch
                if requests:
                    reaper.on_fin_requests(requests, reaper.clock())
                previous.close()
        if policy is None and backend is not None:
            remove(backend=backend)
            backend = None
        self.backend = backend
        if new.metrics != self._metrics_at:
            if self._stop_metrics is not None:
                self._stop_metrics()
            self._stop_metrics, self._metrics_at = new_stop, new.metrics
        self._set_header()
        if self.listener is not None:
            reaper.sweep("start" if first else "reload")
        self.state.write(reaper.counters)

    def _take_over(self, backend: Backend) -> None:
        """Rules of ours already here belong to an earlier run that did not clean up (the NFLOG
        group we hold is exclusive): say so; :func:`apply` then replaces them in place."""
        dead = remove_stale_state(state_dir(), self.netns)
        if status(backend=backend).installed:
            who = f" (pid {', '.join(map(str, dead))}, no longer running)" if dead else ""
            self.say(f"halfclose reap: taking over the rules an earlier run left in place{who}")

    def ready(self) -> None:
        """Say that the reaper covers its apps now (stderr line and ``READY=1``)."""
        line = describe(self.settings, self.policy, self.listener)
        self.say(f"halfclose reap: ready ({line})")
        self.notifier.ready(f"reaping: {line}")

    def reload(self) -> None:
        """Read the configuration again and switch to it; on any error keep the running one."""
        self.reload_requested = False
        self.notifier.reloading()
        try:
            new = self._reload_settings()
            self._switch(new, first=False)
        except HalfcloseError as exc:
            self.say(f"halfclose reap: reload failed, keeping the running configuration: {exc}")
            self.notifier.ready(f"reload failed: {exc}")
            return
        self.reaper.counters.reloads += 1
        line = describe(self.settings, self.policy, self.listener)
        self.say(f"halfclose reap: reloaded ({line})")
        self.notifier.ready(f"reaping: {line}")

    # -- serving --------------------------------------------------------------------------

    def tick(self) -> float | None:
        """Between steps: reload if asked, publish the counters once a second, feed the watchdog.
        Returns the longest wait allowed before the next tick."""
        if self.reload_requested:
            held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
            try:
                self.reload()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
        now = time.monotonic()
        if now - self._last_publish >= 1.0:
            self.state.write(self.reaper.counters)
            self._last_publish = now
        self.notifier.ping(now)
        return self.notifier.watchdog

    def serve(self) -> None:
        """Serve until a signal handler raises (the stop signals)."""
        if self.settings.trigger == "nflog":
            def current() -> NflogListener:
                if self.listener is None:
                    raise EnvironmentProblem("the NFLOG listener went away")
                return self.listener
            while self.settings.trigger == "nflog":
                # A reload asked for by SIGHUP starts within a quarter second. Between ticks
                # nothing but the steps runs; a step waits at most half the longest gap allowed
                # between ticks, and a step starts only in the first half of it.
                listener, step = current(), self.reaper.step_nflog
                wait = min(0.25, self.notifier.watchdog or 0.25) / 2
                until = time.monotonic() + wait
                while not self.reload_requested and time.monotonic() < until:
                    step(listener, wait)
                self.tick()
        while True:
            # poll trigger (from the start, or after a reload switched to it); a reload back to
            # nflog restarts serving in the right loop.
            self.reaper.sweep("poll")
            self.tick()
            if self.settings.trigger == "nflog":
                self.serve()
                return
            self.reaper.sleep(self.settings.interval)
