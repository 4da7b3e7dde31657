"""Dask: a LocalCluster of worker processes, and a scheduler and workers started as the
``dask scheduler`` / ``dask worker`` commands, write the same dataset as a local run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetcap import ROOT, generate, table, tcpdump_rotate
from halfclose.errors import EnvironmentProblem
from halfclose.fleet._engine import AnalysisKnobs
from halfclose.fleet.runner import plan, write_run
from halfclose.fleet.sets import parse_labels

distributed = pytest.importorskip("distributed")

TABLES = ("connections", "findings", "dns", "servers", "captures")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    whole = generate(folder.parent / "whole.pcap", 40_000, seed=11)
    tcpdump_rotate(whole, folder / "edge.pcap", 2)
    generate(folder / "phone.pcap", 15_000, seed=12)
    generate(folder / "tablet.pcap", 10_000, seed=13)
    return folder


@pytest.fixture(scope="module")
def local_run(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = tmp_path_factory.mktemp("local") / "ds"
    write_run(plan([str(inputs)]).sets, str(ds), labels=parse_labels(["app=1"]), knobs=AnalysisKnobs())
    return ds


def _assert_same(a: Path, b: Path) -> None:
    for name in TABLES:
        rows = table(a, name)
        assert rows and rows == table(b, name), name


def test_local_cluster_of_processes(inputs: Path, local_run: Path, tmp_path: Path) -> None:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        seen: list[str] = []
        result = write_run(
            plan([str(inputs)]).sets, str(tmp_path / "ds"), labels=parse_labels(["app=1"]), knobs=AnalysisKnobs(),
            dask=cluster.scheduler_address, on_done=lambda o: seen.append(o.worker),
        )  # fmt: skip
    assert result.committed is not None and len(result.outcomes) == 3
    assert all(w.split(":")[1] != str(os.getpid()) for w in seen)  # worker processes did the work
    _assert_same(local_run, tmp_path / "ds")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def scheduler() -> Iterator[str]:
    dask = shutil.which("dask", path=os.path.dirname(sys.executable))
    if dask is None:
        pytest.skip("the dask command is not installed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        for _ in range(2):
            procs.append(subprocess.Popen(
                [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_scheduler_and_workers_started_as_commands(
    inputs: Path, local_run: Path, scheduler: str, tmp_path: Path
) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "halfclose", "analyze", str(inputs), "--dataset", str(tmp_path / "ds"),
         "--label", "app=1", "--dask", scheduler],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 capture sets written" in done.stdout
    _assert_same(local_run, tmp_path / "ds")


def test_unreachable_scheduler_is_one_line(inputs: Path, tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match="Dask scheduler"):
        write_run(plan([str(inputs / "phone.pcap")]).sets, str(tmp_path / "ds"), labels=parse_labels([]),
                  knobs=AnalysisKnobs(), dask=f"tcp://127.0.0.1:{_free_port()}")  # fmt: skip
    assert not (tmp_path / "ds" / "runs").exists() and not any((tmp_path / "ds" / "_staging").iterdir())


