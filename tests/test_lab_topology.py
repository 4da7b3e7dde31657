from __future__ import annotations

import ipaddress

from halfclose.lab.config import BENCHMARK_V4, ULA
from halfclose.lab.topology import plan_addresses


def test_addresses_stay_in_the_benchmark_range_and_ula() -> None:
    for run_id in ("000000", "ffffff", "abcdef", "123456", "01ff00"):
        addrs = plan_addresses(run_id)
        assert addrs.server_v4 in BENCHMARK_V4 and addrs.phone_v4 in BENCHMARK_V4
        assert addrs.server_v6 in ULA and addrs.phone_v6 in ULA
        assert ipaddress.ip_network(f"{addrs.server_v4}/24", strict=False) == ipaddress.ip_network(
            f"{addrs.phone_v4}/24", strict=False
        )
        assert addrs.server(True) == str(addrs.server_v6)
        assert addrs.phone(False) == str(addrs.phone_v4)


def test_runs_get_different_subnets() -> None:
    assert plan_addresses("000001").server_v4 != plan_addresses("000002").server_v4
