"""A lab with its servers and capture running but no app: the server tests drive it with serverprobe.py."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from halfclose.lab import runner
from halfclose.lab.config import LabConfig, validate
from halfclose.lab.tls import Endpoint
from halfclose.lab.topology import Topology, build, plan_addresses
from halfclose.netns import Claim

PROBE = Path(__file__).with_name("serverprobe.py")


@dataclass
class ServerLab:
    topo: Topology
    endpoint: Endpoint
    pcap: Path
    run_dir: Path
    work: Path

    def probe(self, *args: str, uid: int = 10400, keylog: Path | None = None) -> subprocess.Popen[str]:
        """Start serverprobe.py in the phone namespace as *uid* (it prints its JSON when done)."""
        argv = ["ip", "netns", "exec", self.topo.phone, "setpriv", "--reuid", str(uid), "--regid", str(uid),
                "--clear-groups", "--", sys.executable, str(PROBE), "--host", self.endpoint.host,
                "--port", str(self.endpoint.port), *args]
        if self.endpoint.ca_cert is not None:
            argv += ["--ca", str(self.endpoint.ca_cert)]
        if keylog is not None:
            argv += ["--keylog", str(keylog)]
        if self.endpoint.http2:
            argv.append("--http2")
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, object]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


@contextlib.contextmanager
def server_lab(config: LabConfig, run_dir: Path) -> Iterator[ServerLab]:
    """Namespaces, the DNS and HTTP servers of *config*, tcpdump on the phone; all gone on exit."""
    validate(config)
    with Claim() as claim, contextlib.ExitStack() as stack:
        work = claim.add_path(Path("/run/halfclose") / f"{claim.run_id}-work")
        work.mkdir(parents=True)
        keylogs = work / "keylog"
        keylogs.mkdir(mode=0o777)
        keylogs.chmod(0o777)
        topo = build(claim, plan_addresses(claim.run_id))
        runner._link(config, topo, stack)
        endpoint = runner._start_servers(config, topo, work, stack, run_dir=run_dir)
        pcap = run_dir / "phone.pcap"
        runner._start_capture(topo, pcap, stack)
        yield ServerLab(topo=topo, endpoint=endpoint, pcap=pcap, run_dir=run_dir, work=work)
