"""Policy validation: everything that reaches a rule (or a shell) is checked here."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from halfclose.errors import UsageError
from halfclose.netfilter import Policy, Strategy, Target


def test_defaults_follow_the_field_notes() -> None:
    p = Policy(uids=(10400,))
    assert p.ports == (80, 443)
    assert p.strategy is Strategy.REJECT
    assert (p.tag_mask, p.fin_mask, p.nflog_group) == (0x04000000, 0x08000000, 42)
    assert p.both_masks == 0x0C000000


def test_uids_and_ports_are_normalised() -> None:
    p = Policy(uids=(10401, 10400, 10401), ports=(443, 80, 443), strategy="nflog")  # type: ignore[arg-type]
    assert p.uids == (10401, 10400)
    assert p.ports == (80, 443)
    assert p.strategy is Strategy.NFLOG


@pytest.mark.parametrize(
    "kwargs",
    [
        {"uids": ()},
        {"uids": (-1,)},
        {"uids": (2**32 - 1,)},
        {"uids": ("10400",)},
        {"uids": (True,)},
        {"uids": (1,), "ports": ()},
        {"uids": (1,), "ports": (0,)},
        {"uids": (1,), "ports": (65536,)},
        {"uids": (1,), "ports": tuple(range(1, 17))},
        {"uids": (1,), "tag_mask": 0},
        {"uids": (1,), "fin_mask": 2**32},
        {"uids": (1,), "tag_mask": 0x3, "fin_mask": 0x2},
        {"uids": (1,), "nflog_group": 0},
        {"uids": (1,), "nflog_group": 3},
        {"uids": (1,), "nflog_group": 65536},
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_android_keeps_off_netds_connmark_bits() -> None:
    Policy(uids=(1,)).check_for(Target.ANDROID)
    Policy(uids=(1,), tag_mask=0x01000000).check_for(Target.LINUX)
    with pytest.raises(UsageError, match="netd"):
        Policy(uids=(1,), fin_mask=0x02000000).check_for(Target.ANDROID)


@given(
    uids=st.lists(st.integers(0, 2**32 - 2), min_size=1, max_size=5),
    ports=st.lists(st.integers(1, 65535), min_size=1, max_size=15),
    bits=st.lists(st.integers(0, 31), min_size=2, max_size=2, unique=True),
)
def test_valid_values_always_build(uids: list[int], ports: list[int], bits: list[int]) -> None:
    p = Policy(uids=tuple(uids), ports=tuple(ports), tag_mask=1 << bits[0], fin_mask=1 << bits[1])
    assert set(p.uids) == set(uids) and set(p.ports) == set(ports)
