from __future__ import annotations

import argparse

import pytest

from halfclose.cli._argtypes import metrics_address, port, port_list, seconds, seconds_or_zero


def test_good_values() -> None:
    assert seconds("0.05") == 0.05
    assert seconds_or_zero("0") == 0.0
    assert port("443") == 443
    assert port_list("80,443,") == (80, 443)
    assert str(metrics_address("127.0.0.1:9101")) == "127.0.0.1:9101"


@pytest.mark.parametrize(("kind", "text", "message"), [
    (seconds, "0", "0 must be more than 0 seconds"),
    (seconds, "soon", "'soon' is not a number of seconds"),
    (seconds_or_zero, "-1", "-1 must not be negative"),
    (port, "0", "port 0 is out of range 1-65535"),
    (port, "http", "port 'http' is not a number"),
    (port_list, "80,x", "'80,x' is not a list of port numbers like 80,443"),
    (port_list, "80,70000", "'80,70000': ports are 1-65535"),
    (metrics_address, "localhost:9101", "'localhost' is not an IP address"),
])
def test_bad_values_say_what_is_wrong(kind: object, text: str, message: str) -> None:
    assert callable(kind)
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        kind(text)
