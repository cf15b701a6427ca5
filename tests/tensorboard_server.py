"""A real TensorBoard server from this environment, for the tests and `make screenshot`: started on
a free local port, asked through its HTTP API, and stopped with the data server it starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoardServer:
    """`tensorboard --logdir LOGDIR` on 127.0.0.1, its output in a file; use as a context manager."""

    def __init__(self, logdir: Path, output: Path):
        self.logdir, self.output, self.port = Path(logdir), Path(output), free_port()
        command = [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with open(self.output, "w") as out:
            # A process group of its own, shared with the data server it starts: one signal stops both.
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def __enter__(self) -> TensorBoardServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=30) as response:
            return json.load(response)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url(path), data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def experiment(self) -> dict[str, Any]:
        return self.post("/data/plugin/hparams/experiment", {"experimentName": ""})

    def session_groups(self) -> dict[str, Any]:
        """Every session: the API answers with nothing unless statuses and a slice size are given."""
        return self.post(
            "/data/plugin/hparams/session_groups",
            {"experimentName": "", "allowedStatuses": ALL_STATUSES, "startIndex": 0, "sliceSize": 100_000},
        )

    def log(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float) -> Any:
        """Poll until condition() returns something true; RuntimeError with the server's log if not."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"TensorBoard exited with status {self.process.returncode}:\n{self.log()}")
            try:
                result = condition()
                if result:
                    return result
            except (urllib.error.URLError, ConnectionError, OSError, ValueError) as exc:
                last_error = exc
            time.sleep(0.25)
        raise RuntimeError(
            f"TensorBoard did not {what} within {timeout:.0f} s (last error: {last_error}):\n{self.log()}"
        )

    def wait_loaded(self, runs: set[str], timeout: float) -> dict[str, Any]:
        """Wait until every run is listed and two answers of the HParams API agree; returns the last."""
        self.wait_for(lambda: runs <= set(self.get("/data/runs")), "list every run", timeout)
        # A run's data arrives in one piece, but runs arrive one by one: wait for two equal answers.
        previous: list[Any] = [None]

        def settled() -> Any:
            now = self.session_groups()
            same, previous[0] = now == previous[0], now
            return now if same and now["totalSize"] > 0 else None

        return self.wait_for(settled, "settle", timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # a data server left behind
        except (ProcessLookupError, PermissionError):
            pass
