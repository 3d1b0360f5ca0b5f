"""A real nginx on 127.0.0.1 running ``examples/deploy/nginx.conf``, for tests.

The shipped config is the template: every line marked ``# test: <key>`` is rewritten
(ports, upstream servers, certificate and pid/log paths), the temp paths are pointed into
the prefix, and nginx runs in the foreground under its own prefix directory. The TLS
certificate is self-signed, made here with ``cryptography``, for ``127.0.0.1``/``localhost``.

nginx comes from the Debian package (``apt-get install nginx``; CI does it in ``.ci/run``).
When it is missing, :class:`NginxNotFound` says so: tests fail, they never skip.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "examples" / "deploy" / "nginx.conf"
MARKER = re.compile(r"#\s*test:\s*(?P<key>[a-z_ ]+?)\s*$")
REQUIRED_MARKERS = (
    "pid", "error_log", "access_log", "upstream", "listen http", "listen https", "ssl_certificate", "ssl_certificate_key",
)


class NginxNotFound(RuntimeError):
    """No nginx binary on this machine."""


class NginxTemplateError(RuntimeError):
    """The shipped config no longer has a line the fixture must rewrite."""


def find_nginx() -> str:
    path = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if path is None:
        raise NginxNotFound(
            "nginx is not installed: `apt-get install -y nginx` (Debian package; .ci/run installs it in CI)"
        )
    return path


def make_self_signed_cert(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> tuple[Path, Path]:
    """A fresh self-signed certificate (its own CA) for ``hosts``: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    alt = []
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def render_config(
    template: str,
    *,
    prefix: Path,
    http_port: int,
    https_port: int,
    upstreams: list[str],
    cert: Path,
    key: Path,
) -> str:
    """The shipped config with the marked lines rewritten for a loopback test run."""
    replacements = {
        "pid": f"pid {prefix / 'nginx.pid'};",
        "error_log": f"error_log {prefix / 'error.log'} info;",
        "access_log": f"access_log {prefix / 'access.log'};",
        "listen http": f"listen 127.0.0.1:{http_port};",
        "listen https": f"listen 127.0.0.1:{https_port} ssl;",
        "ssl_certificate": f"ssl_certificate {cert};",
        "ssl_certificate_key": f"ssl_certificate_key {key};",
    }
    seen: set[str] = set()
    out: list[str] = []
    for line in template.splitlines():
        m = MARKER.search(line)
        if m is None:
            out.append(line)
            if line.strip() == "http {":
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
                    out.append(f"    {kind}_temp_path {prefix / 'tmp' / kind};")
                seen.add("http")
            continue
        key_name = m.group("key")
        indent = line[: len(line) - len(line.lstrip())]
        if key_name == "upstream":
            if "upstream" not in seen:
                out.extend(f"{indent}server {u} max_fails=3 fail_timeout=10s;" for u in upstreams)
        elif key_name in replacements:
            out.append(indent + replacements[key_name])
        else:
            raise NginxTemplateError(f"{NGINX_CONF.name}: unknown test marker {key_name!r}")
        seen.add(key_name)
    missing = [k for k in (*REQUIRED_MARKERS, "http") if k not in seen]
    if missing:
        raise NginxTemplateError(f"{NGINX_CONF.name} lost the line(s) the test rewrites: {missing}")
    return "\n".join(out) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NginxProxy:
    """``with NginxProxy(["127.0.0.1:8001", "127.0.0.1:8002"]) as proxy: proxy.https_url`` — stopped on exit.

    Guarantees: listens only on 127.0.0.1; everything it writes is under its own temporary
    prefix (removed on exit); ``stop()`` ends the master and its workers within ``stop_timeout_s``.
    """

    def __init__(self, upstreams: list[str], *, start_timeout_s: float = 10.0, stop_timeout_s: float = 5.0) -> None:
        for u in upstreams:
            host = u.rsplit(":", 1)[0]
            if not ipaddress.ip_address(host).is_loopback:
                raise ValueError(f"upstream {u!r} is not on loopback")
        self.binary = find_nginx()
        self.upstreams = list(upstreams)
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.prefix = Path(tempfile.mkdtemp(prefix="rxdrain-nginx-"))
        self.prefix.chmod(0o755)  # when run as root, the workers (nobody) need to reach their temp dirs
        (self.prefix / "tmp").mkdir()
        self.cert, self.key = make_self_signed_cert(self.prefix)
        self.process: subprocess.Popen | None = None
        self.workers: list = []  # psutil.Process of each worker
        self.http_port = self.https_port = 0

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this proxy's certificate."""
        return ssl.create_default_context(cafile=str(self.cert))

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _start_once(self) -> bool:
        self.http_port, self.https_port = _free_port(), _free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(render_config(
            NGINX_CONF.read_text(), prefix=self.prefix, http_port=self.http_port, https_port=self.https_port,
            upstreams=self.upstreams, cert=self.cert, key=self.key,
        ))
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(self.prefix / "error.log"),
             "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                if "Address already in use" in stderr + self.error_log():
                    return False  # a port was taken between picking and binding: try others
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{stderr}\n{self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.https_port), timeout=0.5):
                    pass
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.02)
                continue
            self.workers = self._workers()
            return True
        self.stop()
        raise RuntimeError(f"nginx did not listen within {self.start_timeout_s:g}s:\n{self.error_log()}")

    def _workers(self) -> list:
        import psutil

        try:
            return psutil.Process(self.process.pid).children()
        except psutil.Error:
            return []

    def current_workers(self) -> list[int]:
        """Pids of the master's worker processes now (also remembered, so ``stop()`` checks them)."""
        known = {w.pid for w in self.workers}
        self.workers += [w for w in self._workers() if w.pid not in known]
        return [w.pid for w in self._workers()]

    def start(self) -> NginxProxy:
        for _ in range(3):
            if self._start_once():
                return self
        raise RuntimeError("nginx could not bind free loopback ports in 3 tries")

    def reload(self) -> None:
        """``nginx -s reload``: new workers take new connections, old ones finish theirs."""
        assert self.process is not None and self.process.poll() is None, "nginx is not running"
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        """Graceful stop (SIGQUIT), then fast (SIGTERM), then SIGKILL; bounded by ``stop_timeout_s`` each."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            self.current_workers()
            for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
                proc.send_signal(sig)
                try:
                    proc.wait(self.stop_timeout_s if sig != signal.SIGKILL else 5.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        self._kill_leftover_workers()

    def _kill_leftover_workers(self) -> None:
        import psutil

        for worker in self.workers:  # psutil.Process objects: a reused pid is never touched
            try:
                if worker.is_running():
                    worker.kill()
                    worker.wait(2.0)
            except psutil.Error:
                pass

    def workers_alive(self) -> list[int]:
        """Worker processes of our master still running (should be none after ``stop()``)."""
        import psutil

        alive = []
        for worker in self.workers:
            try:
                if worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE:
                    alive.append(worker.pid)
            except psutil.Error:
                pass
        return alive

    def cleanup(self) -> None:
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NginxProxy:
        try:
            return self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
        self.cleanup()
