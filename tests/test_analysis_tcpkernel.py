"""The connection table's kernels: plain Python and compiled by numba give the same columns and
history letters; FIN retransmissions by sequence number, letters at one position in the order of
their kinds; Community IDs as hashlib's SHA-1 spells them."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from halfclose.analysis import _tcpkernel as tk
from halfclose.analysis.flows import EVENT_DTYPE, NO_TS
from halfclose.analysis.tcp import CLOSING_ANSWER_NS, _hashed_community_ids
from halfclose.capture.columns import TH_ACK, TH_FIN, TH_RST, TH_SYN

_MISSING = np.iinfo(np.int64).min


def _form(f: Any, form: str) -> Any:
    if form == "python":
        return f.py_func
    return _compiled(f)


@functools.cache
def _compiled(f: Any) -> Any:
    """The kernel compiled by numba, once for the module."""
    numba = pytest.importorskip("numba")
    return numba.njit(nogil=True)(f.py_func)


def _state(n: int) -> dict[str, np.ndarray]:
    """Flow-table columns of *n* connections with nothing seen (the connection pass's inputs)."""
    one, two, six = np.full(n, -1, np.int64), np.full((n, 2), NO_TS, np.int64), np.full((n, 6), NO_TS, np.int64)
    return {
        "a_port": np.full(n, 40000, np.uint16), "b_port": np.full(n, 443, np.uint16),
        "first_dir": np.zeros(n, np.uint8), "first_ack_ts": two.copy(), "last_data_before_fin_ts": one.copy(),
        "closing_ts": np.full(n, NO_TS, np.int64), "run_last_ts": one.copy(), "closing_ref_ts": one.copy(),
        "missed": np.zeros((n, 2), np.int64), "hole_lo": np.zeros((n, 2), np.int64),
        "hole_hi": np.zeros((n, 2), np.int64), "retx_pos": six.copy(), "gap_pos": six.copy(),
        "first_pure_ack_pos": two.copy(), "first_data_pos": two.copy(),
    }  # fmt: skip


def _run(form: str, ev: np.ndarray, state: dict[str, np.ndarray], order: np.ndarray) -> tuple[np.ndarray, list[str]]:
    n = order.shape[0]
    out = np.full((tk.COLUMNS, n), 12345, np.int64)
    hist = np.zeros(5 * ev.shape[0] + 17 * n, np.uint8)
    off = np.zeros(n + 1, np.int64)
    size = _form(tk.connection_pass, form)(
        ev["flow"], ev["dir"], ev["ts"], ev["pos"], ev["seq"], ev["len"], ev["new"], ev["flags"], ev["closing"],
        order, *state.values(), CLOSING_ANSWER_NS, out, hist, off,
    )  # fmt: skip
    assert off[n] == size
    text = hist[:size].tobytes().decode("ascii")
    return out, [text[a:b] for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)]


def _events(rows: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """Events of connection 0 from (direction, flags, seq, len, new), one a millisecond."""
    ev = np.zeros(len(rows), EVENT_DTYPE)
    for k, (d, flags, seq, length, new) in enumerate(rows):
        ev[k] = (0, 10 * k, 1_000_000 * k, d, flags, seq, length, bool(new), 0, 0, k + 1)
    return ev


@pytest.mark.parametrize("form", ["python", "numba"])
@pytest.mark.parametrize(("rows", "history", "orig_retx"), [(8, "ShFEfFDEe", 2), (11, "ShFEfFDEeEEF", 4)])
def test_fins_repeating_an_earlier_end_of_their_side_are_retransmissions(form: str, rows: int, history: str,
                                                                         orig_retx: int) -> None:  # fmt: skip
    """FINs ending where an earlier FIN of the same side ended (wherever they start) are
    retransmissions: ``E``/``e``; the other side's FIN at that end is not. New data riding in a
    FIN after the peer's FIN is a stale write (``D`` after its ``F``). Six FINs are each checked
    against the earlier ones, nine sorted by their ends."""
    fa = TH_FIN | TH_ACK
    ev = _events([
        (0, TH_SYN, 0, 0, 0), (1, TH_SYN | TH_ACK, 0, 0, 0),
        (0, fa, 99, 1, 1), (0, fa, 100, 0, 0), (1, fa, 100, 0, 0), (0, fa, 110, 10, 1), (0, fa, 100, 0, 0),
        (1, fa, 100, 0, 0), (0, fa, 120, 0, 0), (0, fa, 115, 5, 0), (0, fa, 130, 0, 0),
    ])[:rows]  # fmt: skip
    out, letters = _run(form, ev, _state(1), np.zeros(1, np.int64))
    assert letters == [history]
    assert (out[tk.ORIG_FIN_RETX, 0], out[tk.RESP_FIN_RETX, 0]) == (orig_retx, 1)
    assert (out[tk.ORIG_FIN_RETX_NS, 0], out[tk.RESP_FIN_RETX_NS, 0]) == (3_000_000, 7_000_000)
    assert (out[tk.ORIG_FIN_NS, 0], out[tk.RESP_FIN_NS, 0], out[tk.ORIG_RST_NS, 0]) == (2_000_000, 4_000_000, _MISSING)
    assert (out[tk.ORIG, 0], out[tk.ORIG_BY, 0], out[tk.CLOSE_KIND, 0], out[tk.CLOSED_FIRST, 0]) == (0, 0, 0, 0)
    assert (out[tk.STALE_WRITE_NS, 0], out[tk.STALE_WRITES, 0]) == (5_000_000, 1)


@pytest.mark.parametrize("form", ["python", "numba"])
def test_letters_at_one_position_come_in_the_order_of_their_kinds(form: str) -> None:
    """A packet that is a FIN, the side's first data and its 1st retransmission mark: the event's
    letter first, then the state's (retransmission, then first data); the flipped originator
    (``^``) before everything; the originator from a SYN/ACK its receiver did not send first."""
    state = _state(1)
    state["first_dir"][0] = 1  # the responder's SYN/ACK came first
    state["first_pure_ack_pos"][0] = (20, NO_TS)
    state["first_data_pos"][0] = (30, 40)
    state["retx_pos"][0, 3] = 40  # the responder's 1st retransmission
    ev = np.zeros(3, EVENT_DTYPE)
    ev[0] = (0, 10, 1, 1, TH_SYN | TH_ACK, 0, 0, False, 0, 0, 1)
    ev[1] = (0, 40, 2, 1, TH_FIN | TH_ACK, 1, 5, True, 0, 0, 2)
    ev[2] = (0, 50, 3, 0, TH_RST, 10, 0, False, 0, 0, 3)
    out, history = _run(form, ev, state, np.zeros(1, np.int64))
    assert history == ["^hADftdR"]
    assert (out[tk.ORIG, 0], out[tk.ORIG_BY, 0], out[tk.SAW_SYN, 0], out[tk.SAW_SYNACK, 0]) == (0, 1, 0, 1)
    assert (out[tk.CLOSED_FIRST, 0], out[tk.RESP_FIN_NS, 0], out[tk.ORIG_RST_NS, 0]) == (1, 2, 3)


def _random_case(seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Events of many connections with random flags, sequence numbers, payloads and closing codes,
    sorted by connection then position, and random counters."""
    rng = np.random.default_rng(seed)
    n, m = 300, 3000
    ev = np.zeros(m, EVENT_DTYPE)
    ev["flow"] = rng.integers(0, n - 20, m)  # the last connections without events
    ev["pos"] = rng.permutation(10 * m)[:m]
    ev["ts"] = ev["pos"] * 1_000_000 + rng.integers(-5_000_000, 5_000_000, m)
    ev["dir"] = rng.integers(0, 2, m)
    ev["flags"] = rng.choice([TH_SYN, TH_SYN | TH_ACK, TH_FIN | TH_ACK, TH_RST, TH_ACK, TH_RST | TH_ACK,
                              TH_SYN | TH_FIN, TH_FIN | TH_RST, TH_SYN | TH_RST], m)  # fmt: skip
    ev["seq"] = rng.integers(0, 40, m) * 10
    ev["len"] = np.where(rng.random(m) < 0.5, rng.integers(1, 30, m), 0)
    ev["new"] = rng.random(m) < 0.6
    ev["closing"] = np.where(rng.random(m) < 0.3, rng.integers(1, 4, m), 0)
    ev = ev[np.lexsort((ev["pos"], ev["flow"]))]
    state = _state(n)
    t = rng.integers(0, 10 * m, (n, 2)) * 1_000_000
    state["a_port"] = rng.choice([80, 443, 50000], n).astype(np.uint16)
    state["first_dir"] = rng.integers(0, 2, n).astype(np.uint8)
    state["first_ack_ts"] = np.where(rng.random((n, 2)) < 0.8, t, NO_TS)
    state["last_data_before_fin_ts"] = np.where(rng.random(n) < 0.7, t[:, 0], -1)
    state["closing_ts"] = np.where(rng.random(n) < 0.5, t[:, 1], NO_TS)
    state["run_last_ts"] = np.where(rng.random(n) < 0.5, state["last_data_before_fin_ts"], t[:, 1])
    state["closing_ref_ts"] = t[:, 0] - 1_000_000
    state["missed"] = rng.integers(0, 2, (n, 2))
    state["hole_hi"] = rng.integers(0, 3, (n, 2))
    state["retx_pos"] = np.where(rng.random((n, 6)) < 0.3, rng.integers(0, 10 * m, (n, 6)), NO_TS)
    state["gap_pos"] = np.where(rng.random((n, 6)) < 0.3, rng.integers(0, 10 * m, (n, 6)), NO_TS)
    state["first_pure_ack_pos"] = np.where(rng.random((n, 2)) < 0.7, rng.integers(0, 10 * m, (n, 2)), NO_TS)
    state["first_data_pos"] = np.where(rng.random((n, 2)) < 0.7, ev["pos"][rng.integers(0, m, (n, 2))], NO_TS)
    return ev, state, rng.permutation(n)


def test_compiled_connection_pass_matches_plain_python() -> None:
    """Every output column and every history letter, for connections in a shuffled order."""
    ev, state, order = _random_case(11)
    py_out, py_hist = _run("python", ev, state, order)
    nb_out, nb_hist = _run("numba", ev, state, order)
    assert np.array_equal(py_out, nb_out)
    assert py_hist == nb_hist
    assert sum(map(len, py_hist)) > 3000 and (py_out[tk.ORIG_FIN_RETX] > 0).any()
    assert (py_out[tk.STALE_WRITES] > 0).any() and (py_out[tk.UNBROKEN_CLOSING] == 1).any()


@pytest.mark.parametrize("form", ["python", "numba"])
def test_community_id_texts_are_hashlib_s(form: str) -> None:
    """IPv4 and IPv6 rows, equal addresses told apart by port, equal endpoints, a seed and another
    protocol: the texts the hashlib path writes."""
    rng = np.random.default_rng(3)
    n = 400
    ver = np.where(rng.random(n) < 0.5, 6, 4)
    v4 = (0xFFFF << 32) | rng.integers(0, 2**32, n)

    def addresses() -> tuple[np.ndarray, np.ndarray]:
        hi = np.where(ver == 4, 0, rng.integers(0, 2**63, n)).astype(np.uint64)
        return hi, np.where(ver == 4, v4, rng.integers(0, 2**63, n)).astype(np.uint64)

    (oh, ol), (rh, rl) = addresses(), addresses()
    rh[::5], rl[::5] = oh[::5], ol[::5]  # same address: the ports decide
    op, rp = rng.integers(0, 65536, n), rng.integers(0, 65536, n)
    rp[::10] = op[::10]  # the same endpoint
    for proto, seed in ((6, 0), (17, 7)):
        want = np.zeros((n, 30), np.uint8)
        _hashed_community_ids(ver, oh, ol, rh, rb=rl, op=op, rp=rp, proto=proto, seed=seed, ids=want)
        got = np.zeros((n, 30), np.uint8)
        _form(tk.community_id_texts, form)(ver, oh, ol, rh, rl, op, rp, proto, seed, got)
        assert got.tobytes() == want.tobytes()
