"""Run figures made up for the tests of what reads them (compare, matrix, report)."""

from __future__ import annotations

from halfclose.lab.figures import AppFigures, LinkFigures, RunFigures, WireFigures


def figures(*, stale_writes: int = 0, rsts: int = 0, app_retries: int = 0, server_fin_retransmits: int = 0,
            post_idle_wait_ms: float = 100.0, post_idle_wait_rtts: float = 2.0, dns_queries: int = 12,
            server_closed_first: int = 5, server_reset_first: int = 0, keep_alive: str = "",
            server_goaway_first: int = 0, server_close_notify_first: int = 0,
            server_tls_record_first: int = 0) -> RunFigures:
    """A run's figures as a six-request run with a 50 ms RTT could have them, with some changed."""
    app = AppFigures(requests=6, ok=6, post_idle=5, reused_dead=0, app_errors=0, app_retries=app_retries,
                     connections=6, dns_lookups=-1, median_ms_dead=None, median_ms_other=200.0,
                     median_ms_post_idle=200.0, median_ms_warm=100.0, p95_ms_post_idle=210.0,
                     http_versions="1.1", keep_alive=keep_alive)
    wire = WireFigures(packets=200, payload_bytes=120000, tcp_connections=6, server_closed_first=server_closed_first,
                       server_reset_first=server_reset_first, server_goaway_first=server_goaway_first,
                       server_close_notify_first=server_close_notify_first,
                       server_tls_record_first=server_tls_record_first, stale_writes=stale_writes, server_rsts=rsts,
                       client_rsts=0, rsts=rsts,
                       server_fin_retransmits=server_fin_retransmits, client_close_unacked=0,
                       server_linger_ms_median=1.0,
                       dns_queries=dns_queries, rtt_ms_median=50.0, handshakes=6)
    link = LinkFigures(mode="forwarder", rtt_ms_asked=50, jitter_ms=0, loss_pct=0, seed=1, handshakes=6,
                       rtt_ms_median=50.0, rtt_ms_min=50.0, rtt_ms_max=50.0, counters=None)
    return RunFigures(app=app, wire=wire, link=link, waits_ns={}, post_idle_wait_ms=post_idle_wait_ms,
                      post_idle_wait_rtts=post_idle_wait_rtts, first_wait_ms=150.0, post_idle_rtts_median=4.0,
                      post_idle_rtts_p95=4.2, post_idle_beyond_rtt_ms=150.0, dns_queries_per_request=dns_queries / 6,
                      syn_data_conns=0)
