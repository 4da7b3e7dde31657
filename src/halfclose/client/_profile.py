"""Server idle timeouts from a profile file (written by ``halfclose analyze --profile FILE``).

The file is a JSON object mapping a server name to its idle timeout in seconds::

    {"img.example.com": 60, "api.example.com:8443": 5.0}

or the same mapping under a ``"servers"`` key (other top-level keys are then ignored)::

    {"servers": {"img.example.com": {"idle_timeout": 60}}, "generated": "..."}

A value is a positive number, or an object with a positive ``idle_timeout`` (or
``idle_timeout_s``) number. A name is a host name (matched for any port) or ``host:port``.
Anything else is the file's fault and raises :class:`~halfclose.errors.InputError` naming the file
and the entry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from halfclose.errors import InputError

__all__ = ["Profile", "load_profile"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """Idle timeouts per server name.

    Example:
        >>> p = Profile.from_mapping({"img.lab.test": 60, "api.lab.test:8443": 5})
        >>> p.idle_timeout("IMG.lab.test.", 443), p.idle_timeout("api.lab.test", 8443)
        (60.0, 5.0)
        >>> p.idle_timeout("api.lab.test", 443) is None
        True
    """

    timeouts: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, servers: Mapping[str, object], *, origin: str = "profile") -> Profile:
        """Validate and normalise a server-name mapping (see the module docstring)."""
        out: dict[str, float] = {}
        for name, value in servers.items():
            if not isinstance(name, str) or not name.strip():
                raise InputError(f"{origin}: server names must be non-empty strings, got {name!r}")
            seconds = value
            if isinstance(value, Mapping):
                seconds = value.get("idle_timeout", value.get("idle_timeout_s"))
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
                raise InputError(
                    f"{origin}: server {name!r}: the idle timeout must be a positive number of "
                    f"seconds, got {value!r}"
                )
            out[_norm(name)] = float(seconds)
        return cls(timeouts=out)

    def idle_timeout(self, host: str, port: int | None = None) -> float | None:
        """The profile's idle timeout for *host* (and *port*), or None."""
        host = _norm(host)
        if port is not None:
            found = self.timeouts.get(f"{host}:{port}")
            if found is not None:
                return found
        return self.timeouts.get(host)


def _norm(name: str) -> str:
    name = name.strip().lower()
    host, sep, port = name.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return f"{host.rstrip('.')}:{port}"
    return name.rstrip(".")


def load_profile(path: str | Path) -> Profile:
    """Read a profile file; raise :class:`~halfclose.errors.InputError` when it is not one.

    Example:
        >>> import tempfile, os
        >>> with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        ...     _ = f.write('{"servers": {"img.lab.test": 2}}')
        >>> load_profile(f.name).idle_timeout("img.lab.test")
        2.0
        >>> os.unlink(f.name)
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the profile: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: the profile is not UTF-8 text") from exc
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{path}: the profile is not JSON ({exc}); write it with "
                         "'halfclose analyze --profile FILE'") from exc
    if not isinstance(body, dict):
        raise InputError(f"{path}: the profile must be a JSON object of server name -> seconds")
    if "servers" in body:
        servers = body["servers"]
        if not isinstance(servers, dict):
            raise InputError(f"{path}: \"servers\" must be an object of server name -> seconds")
        return Profile.from_mapping(servers, origin=str(path))
    return Profile.from_mapping(body, origin=str(path))
