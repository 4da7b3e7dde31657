"""Captures for the fleet tests: generated ones (bench/gen_capture.py) split as rotations are."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from halfclose.analysis_io import analyze
from halfclose.fleet.dataset import Dataset
from tshark import fields

ROOT = Path(__file__).resolve().parents[1]

#: Columns that say where a record was found, not what it is.
WHERE = {"file", "file_index", "first_frame", "run_id"}


def generate(out: Path, packets: int, seed: int) -> Path:
    argv = [sys.executable, str(ROOT / "bench" / "gen_capture.py"), str(out), "--packets", str(packets)]
    subprocess.run([*argv, "--seed", str(seed)], check=True, capture_output=True, timeout=300)
    out.with_name(out.name + ".truth.json").unlink()
    return out


def tcpdump_rotate(src: Path, dest: Path, megabytes: int) -> list[Path]:
    """``tcpdump -r src -w dest -C megabytes``: dest, dest1, dest2, ..."""
    subprocess.run(["tcpdump", "-Z", "root", "-r", str(src), "-w", str(dest), "-C", str(megabytes)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return sorted(dest.parent.glob(dest.name + "*"))


def editcap_split(src: Path, dest: Path, packets: int) -> list[Path]:
    """``editcap -c packets src dest``: dest_00000_<time>.pcap, ..."""
    subprocess.run(["editcap", "-c", str(packets), str(src), str(dest)], check=True, capture_output=True, timeout=120)
    return sorted(dest.parent.glob(dest.stem + "_*"))


def table(dataset: Path | str, name: str) -> list[dict[str, Any]]:
    """Every committed row of a dataset table, sorted, without the columns that say where it was found."""
    rows: list[dict[str, Any]] = []
    for f in Dataset(str(dataset)).files(name):
        rows += pq.read_table(f).to_pylist()
    clean = [{k: v for k, v in r.items() if k not in WHERE} for r in rows]
    return sorted(clean, key=repr)


def unsplit_connections(pcap: Path) -> list[dict[str, Any]]:
    cols = analyze([pcap]).connections.columns()
    rows = [dict(zip(cols, r, strict=True)) for r in zip(*cols.values(), strict=True)]
    return sorted(({k: v for k, v in r.items() if k not in WHERE} for r in rows), key=repr)


def tshark_stream_packets(pcap: Path) -> Counter[int]:
    """Packets per TCP stream, as tshark counts them (a Counter of stream sizes)."""
    per: Counter[str] = Counter(row[0] for row in fields(pcap, ["tcp.stream"], "tcp"))
    return Counter(per.values())
