"""One self-contained HTML page per comparison or analysis: tables, timelines, latency chart.

Charts are plotly figures with plotly.js embedded once in the page, so the file opens offline.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from halfclose.analysis import Analysis, FindingKind
from halfclose.lab.compare import Comparison, ranking
from halfclose.lab.figures import is_post_idle
from halfclose.lab.matrix import FIGURES, Matrix
from halfclose.report.lab import RANKING_HEADS, RANKING_NOTE, ranking_line, verbatim_lines, verdict
from halfclose.report.matrix import LABELS, figure_text, heading
from halfclose.report.terminal import ROWS

__all__ = ["analysis_html", "comparison_html", "heatmap_figure", "latency_figure", "matrix_html", "timeline_figure"]

_MARKERS: dict[str, tuple[str, str]] = {
    # name: (plotly symbol, colour)
    "server FIN": ("triangle-left", "#d62728"),
    "stale write": ("x", "#ff7f0e"),
    "RST from server": ("square", "#8c564b"),
    "RST from client": ("square-open", "#9467bd"),
    "retransmitted FIN": ("triangle-left-open", "#e377c2"),
    "DNS query": ("diamond", "#2ca02c"),
}


def timeline_figure(runs: Sequence[tuple[str, Analysis]], *, limit: int = 300) -> go.Figure:
    """One timeline per run: each connection a bar from SYN (or first packet) to close, with markers.

    Only the first *limit* connections of a run are drawn (and DNS queries up to the last of them).
    """
    fig = make_subplots(rows=max(1, len(runs)), cols=1, subplot_titles=[label for label, _ in runs],
                        vertical_spacing=0.35 / max(1, len(runs)))
    shown: set[str] = set()
    for row, (_label, analysis) in enumerate(runs, start=1):
        conns = sorted(analysis.connections, key=lambda c: c.ts_ns)[:limit]
        horizon = max((c.end_ns for c in conns), default=None)
        exchanges = [e for e in analysis.dns.exchanges if horizon is None or e.ts_ns <= horizon]
        starts = [c.ts_ns for c in conns] + [e.ts_ns for e in exchanges]
        t0 = min(starts) if starts else 0
        names = [f"{c.orig_p}" for c in conns]
        fig.add_trace(
            go.Bar(
                y=names, x=[(c.end_ns - c.ts_ns) / 1e9 for c in conns], base=[(c.ts_ns - t0) / 1e9 for c in conns],
                orientation="h", marker_color="#1f77b4", opacity=0.55, name="connection",
                showlegend="connection" not in shown,
                hovertext=[f"{c.uid} {c.orig_h}:{c.orig_p} -> {c.resp_h}:{c.resp_p} {c.conn_state} {c.history}"
                           for c in conns],
            ),
            row=row, col=1,
        )
        shown.add("connection")
        points: dict[str, tuple[list[float], list[str]]] = {name: ([], []) for name in _MARKERS}
        by_uid = {c.uid: c for c in conns}
        for c, name in zip(conns, names, strict=True):
            for marker, when in (("server FIN", c.resp_fin_ns), ("stale write", c.stale_write_ns),
                                 ("RST from server", c.resp_rst_ns), ("RST from client", c.orig_rst_ns)):
                if when is not None:
                    points[marker][0].append((when - t0) / 1e9)
                    points[marker][1].append(name)
        for finding in analysis.findings:
            if finding.kind is FindingKind.LOST_FIN_ACK and finding.uids and finding.uids[0] in by_uid:
                points["retransmitted FIN"][0].append((finding.ts_ns - t0) / 1e9)
                points["retransmitted FIN"][1].append(f"{by_uid[finding.uids[0]].orig_p}")
        for exchange in exchanges:
            points["DNS query"][0].append((exchange.ts_ns - t0) / 1e9)
            points["DNS query"][1].append("DNS")
        for marker, (xs, ys) in points.items():
            if not xs:
                continue
            symbol, colour = _MARKERS[marker]
            fig.add_trace(
                go.Scatter(x=xs, y=ys, mode="markers", name=marker, showlegend=marker not in shown,
                           marker={"symbol": symbol, "color": colour, "size": 11, "line": {"width": 1.5}}),
                row=row, col=1,
            )
            shown.add(marker)
        fig.update_xaxes(title_text="seconds since the first packet", row=row, col=1)
        fig.update_yaxes(title_text="client port", type="category", row=row, col=1)
    fig.update_layout(height=260 * max(1, len(runs)) + 80, barmode="overlay", title="Connections over time",
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"}, margin={"t": 110})
    return fig


def latency_figure(comparison: Comparison) -> go.Figure:
    """Post-idle request latency per remedy (each request a point, with a box)."""
    fig = go.Figure()
    for outcome in comparison.outcomes:
        if outcome.result is None:
            continue
        result = outcome.result
        values = [r.latency_ns / 1e6 for r in result.records if is_post_idle(r, result.config)]
        fig.add_trace(go.Box(y=values, name=outcome.remedy.name, boxpoints="all", jitter=0.3, pointpos=0))
    fig.update_layout(title="Post-idle request latency", yaxis_title="ms", showlegend=False, height=420)
    return fig


def _page(title: str, intro: str, sections: Sequence[str]) -> str:
    body = "\n".join(sections)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
p.verdict {{ max-width: 60em; background: #f4f7fb; padding: 1em; border-left: 4px solid #1f77b4; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
{intro}
{body}
</body></html>
"""


def _figures(figures: Sequence[go.Figure]) -> list[str]:
    # plotly.js goes into the page once, with the first figure.
    return [
        pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, div_id=f"chart-{i}")
        for i, fig in enumerate(figures)
    ]


def comparison_html(comparison: Comparison) -> str:
    """The comparison page: verdict, table, timelines per strategy, latency chart."""
    head = "".join(f"<th>{html.escape(o.remedy.name)}</th>" for o in comparison.outcomes)
    rows = []
    for label, show in ROWS:
        cells = "".join(
            f"<td>{html.escape(show(o.figures)) if o.figures is not None else 'skipped'}</td>"
            for o in comparison.outcomes
        )
        rows.append(f"<tr><td>{html.escape(label.strip())}</td>{cells}</tr>")
    table = f'<table id="metrics"><tr><th></th>{head}</tr>{"".join(rows)}</table>'
    rank_head = "".join(f"<th>{html.escape(h)}</th>" for h in RANKING_HEADS)
    rank_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in ranking_line(i, o)) + "</tr>"
        for i, o in enumerate(ranking(comparison.outcomes), 1)
    )
    ranked = (f'<h2>Ranked by the waste left</h2><table id="ranking"><tr>{rank_head}</tr>{rank_rows}</table>'
              f"<p>{html.escape(RANKING_NOTE)}</p>" if rank_rows else "")
    notes = "".join(f"<li>{html.escape(line)}</li>" for o in comparison.outcomes for line in verbatim_lines(o))
    skipped = "".join(
        f"<li>{html.escape(o.remedy.name)} skipped: {html.escape(o.skipped)}</li>"
        for o in comparison.outcomes if not o.ran()
    )
    runs = [(f"{o.remedy.name} ({o.remedy.client.value}, fix {o.remedy.fix.value})", o.result.analysis)
            for o in comparison.outcomes if o.result is not None]
    config = comparison.config
    intro = (
        f"<p>{config.requests} requests, {config.gap_s:g} s apart; server idle timeout {config.idle_timeout_s:g} s "
        f"({config.server.value}); DNS TTL {config.dns_ttl_s} s ({config.dns.value}); RTT {config.rtt_ms:g} ms.</p>"
        f'<p class="verdict">{html.escape(verdict(comparison.outcomes))}</p>'
    )
    sections = [ranked, table, f"<ul>{notes}</ul>" if notes else "", f"<ul>{skipped}</ul>" if skipped else "",
                *_figures([timeline_figure(runs), latency_figure(comparison)])]
    return _page("halfclose lab compare", intro, sections)


def heatmap_figure(matrix: Matrix, key: str) -> go.Figure:
    """One figure of every pair as a heat map: clients as rows, servers as columns, values written in."""
    label = LABELS[key].title
    values = [[matrix.cell(s, c).values()[key] for s in matrix.servers] for c in matrix.clients]
    ran = [[matrix.cell(s, c).ran() for s in matrix.servers] for c in matrix.clients]
    text = [[figure_text(key, v) if ok else "skipped" for v, ok in zip(row, oks, strict=True)]
            for row, oks in zip(values, ran, strict=True)]
    # A figure that is a word (how the server closed) is coloured by the word.
    words = sorted({str(v) for row in values for v in row if isinstance(v, str)})
    z = [[(words.index(v) if isinstance(v, str) else v) for v in row] for row in values]
    heat = go.Heatmap(
        z=z, x=[s.value for s in matrix.servers], y=[c.value for c in matrix.clients], text=text,
        texttemplate="%{text}", hovertemplate="client %{y}, server %{x}: %{text}<extra></extra>",
        colorscale="Viridis" if words else "YlOrRd", showscale=not words, xgap=2, ygap=2,
        # Every figure counts waste from nothing up: no waste is the palest colour.
        zmin=None if words else 0,
    )
    fig = go.Figure(heat)
    fig.update_layout(title=f"{label} (columns: servers)", height=140 + 42 * max(1, len(matrix.clients)),
                      margin={"t": 90}, xaxis={"side": "top", "type": "category"},
                      yaxis={"title": "client", "autorange": "reversed", "type": "category"})
    return fig


def matrix_html(matrix: Matrix) -> str:
    """The matrix page: a heat map per figure, and the pairs that were skipped with their reasons."""
    skipped = "".join(
        f"<li>{html.escape(c.client.value)} &rarr; {html.escape(c.server.value)}: {html.escape(c.skipped)}</li>"
        for c in matrix.cells if not c.ran()
    )
    intro = f"<p>{html.escape(heading(matrix))}.</p>"
    sections = [f'<ul id="skipped">{skipped}</ul>' if skipped else "",
                *_figures([heatmap_figure(matrix, f.key) for f in FIGURES])]
    return _page("halfclose lab matrix", intro, sections)


def analysis_html(analysis: Analysis, title: str = "halfclose analyze") -> str:
    """The analysis page: summary table, server timeouts, a connection timeline."""
    s = analysis.summary
    summary_rows = [
        ("packets", s.packets), ("TCP connections", s.tcp_connections),
        ("server closed first", s.server_closed_first), ("client wrote after the server's FIN", s.stale_reuse),
        ("FIN retransmissions", s.fin_retransmits), ("DNS queries", s.dns_queries),
    ]
    table = '<table id="summary">' + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in summary_rows) + "</table>"
    servers = '<table id="servers"><tr><th>server</th><th>idle timeout (s)</th><th>samples</th></tr>' + "".join(
        f"<tr><td>{html.escape(t.server)}</td><td>{t.idle_timeout_s:.3f}</td><td>{t.samples}</td></tr>"
        for t in analysis.servers) + "</table>"
    intro = f'<p class="verdict">{html.escape(s.headline)}</p>'
    return _page(title, intro, [table, servers, *_figures([timeline_figure([("capture", analysis)])])])
