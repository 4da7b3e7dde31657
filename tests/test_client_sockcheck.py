"""The look at an idle socket: TCP state from TCP_INFO and a non-blocking peek, on real TCP."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from halfclose.client._sockcheck import (
    TCP_CLOSE_WAIT,
    SocketState,
    TcpInfo,
    is_established,
    probe,
    read_tcp_info,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def wait_for_state(sock: socket.socket, state: int) -> None:
    for _ in range(200):
        info = read_tcp_info(sock)
        if info is not None and info.state == state:
            return
        time.sleep(0.01)
    raise AssertionError(f"socket never reached TCP state {state}")


def test_decode_by_length() -> None:
    raw = bytearray(104)
    raw[0] = TCP_CLOSE_WAIT
    struct.pack_into("=I", raw, 56, 1500)
    struct.pack_into("=I", raw, 68, 25000)
    raw[5] = 0x20  # tcpi_options: TCPI_OPT_SYN_DATA
    raw[7] = 3 << 1  # tcpi_fastopen_client_fail: TFO_SYN_RETRANSMITTED, after one bit
    info = TcpInfo.decode(bytes(raw))
    assert info == TcpInfo(state=8, last_ack_recv=1.5, rtt=0.025, options=0x20, fastopen_client_fail=3)
    assert info.is_close_wait()
    short = TcpInfo.decode(bytes(raw[:40]))
    assert short.last_ack_recv is None and short.rtt is None
    assert TcpInfo.decode(bytes(raw[:5])).options is None
    with pytest.raises(ValueError):
        TcpInfo.decode(b"")


def test_idle_established_socket_is_reusable(pair: tuple[socket.socket, socket.socket]) -> None:
    client, _ = pair
    look = probe(client)
    assert look.state is SocketState.IDLE
    assert look.state.is_reusable()
    assert look.rtt is not None


def test_socket_with_a_timeout_is_looked_at_without_waiting(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, _ = pair
    client.settimeout(30)
    assert probe(client).state is SocketState.IDLE
    assert client.gettimeout() == 30


def test_server_fin_is_close_wait_and_says_when(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.close()
    wait_for_state(client, TCP_CLOSE_WAIT)
    time.sleep(0.05)
    look = probe(client)
    assert look.state is SocketState.PEER_CLOSED
    assert look.closed_ago is not None and look.closed_ago >= 0.04


def test_unsolicited_bytes(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    for _ in range(100):
        if probe(client).state is not SocketState.IDLE:
            break
        time.sleep(0.01)
    assert probe(client).state is SocketState.UNSOLICITED
    assert client.recv(100).startswith(b"HTTP/1.1 408"), "the peek consumed nothing"


def test_reset_socket_is_broken(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # RST
    for _ in range(100):
        if probe(client).state is not SocketState.IDLE:
            break
        time.sleep(0.01)
    assert probe(client).state is SocketState.BROKEN


def test_non_tcp_and_closed_sockets() -> None:
    a, b = socket.socketpair()
    assert read_tcp_info(a) is None
    assert probe(a).state is SocketState.IDLE
    b.close()
    assert probe(a).state is SocketState.PEER_CLOSED
    a.close()
    assert probe(a).state is SocketState.BROKEN


def test_is_established_until_the_peer_fin(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    assert is_established(client)
    server.close()
    wait_for_state(client, TCP_CLOSE_WAIT)
    assert not is_established(client)
    a, b = socket.socketpair()  # not TCP: unknown, so not established
    try:
        assert not is_established(a)
    finally:
        a.close()
        b.close()
