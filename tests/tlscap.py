"""Real TLS and HTTP/2 captures for the analysis tests: nginx over TLS 1.3, TLS 1.2 and h2c, each
with its own keep-alive timeout, a throwaway CA made in the test's folder, and real clients
(Python http.client over ssl, httpx over HTTP/2 and h2c) in a client namespace; tcpdump there."""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from halfclose.netns import Claim
from halfclose.proc import run, spawn
from realcap import _wait_port, start_dnsmasq, start_tcpdump, stop_all, stop_tcpdump, two_hosts


@dataclass(frozen=True)
class Site:
    """One nginx server block: its name, port, TLS version (None: h2c) and keep-alive timeout."""

    name: str
    port: int
    tls: str | None
    idle_s: float


SITES = (
    Site(name="a.lab.test", port=443, tls="1.3", idle_s=1.5),
    Site(name="b.lab.test", port=8443, tls="1.2", idle_s=2.5),
    Site(name="c.lab.test", port=8080, tls=None, idle_s=1.0),
)


CLIENT_CODE = r"""
import http.client, socket, ssl, sys, threading, time
import dns.message, dns.query
import httpx

dns_server, ca, keylog = sys.argv[1], sys.argv[2], sys.argv[3]
sites = {name: (int(port), float(idle)) for name, port, idle in (s.split(",") for s in sys.argv[4:])}
out = []

def resolve(name):
    r = dns.query.udp(dns.message.make_query(name, "A"), dns_server, timeout=2)
    return [rd.to_text() for rrset in r.answer for rd in rrset][0]

def context(max12=False):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.keylog_filename = keylog  # for tshark, the oracle, to read the records
    if max12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx

def https(name, max12=False):
    port, _ = sites[name]
    c = http.client.HTTPSConnection(resolve(name), port, timeout=5)
    raw = socket.create_connection((c.host, port), timeout=5)
    c.sock = context(max12).wrap_socket(raw, server_hostname=name)  # SNI and the certificate: the name
    return c

def get(c, name):
    c.request("GET", "/", headers={"Host": name})
    return c.getresponse().read()

def h1_idle(name, max12=False):
    # two requests back to back, then idle past the server's timeout: the server closes
    c = https(name, max12)
    get(c, name); get(c, name)
    time.sleep(sites[name][1] + 1.0)
    c.close()
    out.append("h1-idle " + name)

def h1_stale(name):
    # a request into the connection the server closed while idle, then a retry
    c = https(name)
    get(c, name)
    time.sleep(sites[name][1] + 1.0)
    try:
        get(c, name)
        out.append("no-error")
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
        c.close()
        c = https(name)
        get(c, name)
        out.append("stale-retried " + name)
    c.close()

def h2(name, max12=False, clear=False):
    port, idle = sites[name]
    addr = resolve(name)
    if clear:
        client = httpx.Client(http1=False, http2=True)
        url = f"http://{addr}:{port}/"
        ext = {}
    else:
        client = httpx.Client(http2=True, verify=context(max12))
        url = f"https://{addr}:{port}/"
        ext = {"sni_hostname": name}
    r = client.get(url, headers={"Host": name}, extensions=ext)
    assert r.http_version == "HTTP/2", r.http_version
    client.get(url, headers={"Host": name}, extensions=ext)
    time.sleep(idle + 1.0)
    client.close()
    out.append("h2 " + name + (" clear" if clear else ""))

a, b, c = "a.lab.test", "b.lab.test", "c.lab.test"
jobs = [
    (h1_idle, (a,)), (h1_idle, (a,)), (h1_stale, (a,)), (h1_idle, (b, True)), (h1_idle, (b, True)),
    (h2, (a,)), (h2, (a,)), (h2, (b, True)), (h2, (b, True)), (h2, (c, False, True)), (h2, (c, False, True)),
]
threads = []
for k, (f, args) in enumerate(jobs):
    t = threading.Thread(target=f, args=args)
    t.start()
    threads.append(t)
    time.sleep(0.05)
for t in threads:
    t.join()
print("\n".join(sorted(out)))
print("done")
"""


@dataclass(frozen=True)
class TlsCapture:
    pcap: Path
    keylog: Path
    server: str
    client: str
    stdout: str


def make_ca(workdir: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for *names*: (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "halfclose test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _nginx_conf(workdir: Path, srv: str, cert: Path, key: Path) -> str:
    blocks = []
    for site in SITES:
        if site.tls is None:
            listen = f"listen {srv}:{site.port} http2;"
            tls = ""
        else:
            listen = f"listen {srv}:{site.port} ssl http2;"
            tls = f"ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv{site.tls};"
        blocks.append(
            f"server {{ {listen} server_name {site.name}; {tls} keepalive_timeout {round(site.idle_s * 1000)}ms; "
            f'location / {{ return 200 "x"; }} }}'
        )
    return textwrap.dedent(
        f"""
        daemon off; pid {workdir}/nginx.pid; error_log stderr;
        events {{}}
        http {{ access_log off;
          client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
          uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
          {chr(10).join(blocks)} }}
        """
    )


def make_tls_capture(claim: Claim, workdir: Path) -> TlsCapture:
    """Run the TLS, h2 and h2c clients against nginx and return the client-side pcap."""
    ns_s, ns_c, srv, cli = two_hosts(claim, ipv6=False)
    ca, cert, key = make_ca(workdir, [s.name for s in SITES])
    conf = workdir / "nginx.conf"
    conf.write_text(_nginx_conf(workdir, srv, cert, key))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn(["nginx", "-c", str(conf), "-p", str(workdir)], netns=ns_s, stderr=subprocess.DEVNULL))
        procs.append(start_dnsmasq(ns_s, srv, workdir, [s.name for s in SITES]))
        for site in SITES:
            _wait_port(ns_s, site.port)
        pcap = workdir / "tls.pcap"
        dump = start_tcpdump(ns_c, pcap, "eth0")
        procs.append(dump)
        keylog = workdir / "keys.log"
        sites = (f"{s.name},{s.port},{s.idle_s}" for s in SITES)
        argv = [sys.executable, "-c", CLIENT_CODE, srv, str(ca), str(keylog), *sites]
        done = run(argv, netns=ns_c, timeout=60)
        assert "done" in done.stdout, done.stdout + done.stderr
        assert "no-error" not in done.stdout, done.stdout
        stop_tcpdump(dump)
    finally:
        stop_all(procs)
    return TlsCapture(pcap=pcap, keylog=keylog, server=srv, client=cli, stdout=done.stdout)
