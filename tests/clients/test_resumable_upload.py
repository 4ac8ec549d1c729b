"""The ``resumable-upload`` CLI (PyPI ``resumable-upload``) against a real gateway process.

Its client strips the trailing slash from whatever URL it is given, so it creates uploads
with ``POST /files``: the collection must answer there as at ``/files/``, as tusd and
@tus/server do. The CLI is run as a subprocess, as a user runs it: a plain upload (also
with PATCH sent as POST with X-HTTP-Method-Override), an upload killed midway and resumed
from the URL it remembered (``--resume``), and parallel partial uploads merged by a final
concatenation (``--parallel``). Each is checked byte for byte.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients.support import MiB, assert_delivered, head_offset, random_file
from tests.conftest import GatewayProcess

Gateways = Callable[..., GatewayProcess]
CLI = str(Path(sys.executable).with_name("resumable-upload"))
RUN_TIMEOUT_S = 60


def upload_args(gw: GatewayProcess, source: Path, *extra: str) -> list[str]:
    # The URL as a user would write it, without the slash (the CLI would drop it anyway).
    return [CLI, "upload", str(source), "--url", gw.url.rstrip("/"), "--no-progress",
            "--max-retries", "0", *extra]


def run_cli(args: list[str], cwd: Path) -> str:
    """Run the CLI to its end; returns the upload URL it prints."""
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{args}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    url = done.stdout.strip().splitlines()[-1]
    assert url.startswith("http://127.0.0.1:"), done.stdout
    return url


@pytest.mark.parametrize("mode", ["plain", "method-override"])
def test_resumable_upload_cli_creates_at_the_collection_without_slash(
        gateway_process: Gateways, tmp_path: Path, mode: str) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "plain.bin", 3 * MiB + 123)
    extra = ["--chunk-size", str(MiB)]
    if mode == "method-override":
        extra.append("--override-patch-method")
    url = run_cli(upload_args(gw, source, *extra), tmp_path)
    # The upload keeps its one canonical URL, under the collection with its slash.
    assert url.startswith(gw.url)
    assert_delivered(gw, url, source, "plain.bin")


def test_resumable_upload_cli_resumes_after_being_killed(gateway_process: Gateways,
                                                         tmp_path: Path) -> None:
    """The CLI is stopped and let run in short slices until some but not all bytes are in,
    then killed; run again with ``--resume``, it finds its URL in ``.tus_urls.json``, asks
    the gateway for the offset and sends the rest."""
    gw = gateway_process()
    size = 8 * MiB
    source = random_file(tmp_path / "resume.bin", size)
    stored = tmp_path / ".tus_urls.json"
    args = upload_args(gw, source, "--resume", "--chunk-size", str(64 * 1024))
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not stored.exists() or not json.loads(stored.read_text() or "{}"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the CLI never stored its upload URL"
            time.sleep(0.005)
        url = next(iter(json.loads(stored.read_text()).values()))
        offset = 0
        while offset == 0:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
            proc.send_signal(signal.SIGSTOP)
            offset = head_offset(url)
            assert time.monotonic() < deadline, "no byte arrived"
        assert offset < size, "the CLI finished before it could be interrupted"
    finally:
        proc.kill()
        proc.communicate()
    assert not (gw.data_dir / "complete" / "resume.bin").exists()

    resumed = run_cli(args, tmp_path)
    assert resumed == url  # the same upload, continued, not a new one
    assert_delivered(gw, url, source, "resume.bin")


def test_resumable_upload_cli_parallel_partials(gateway_process: Gateways,
                                                tmp_path: Path) -> None:
    gw = gateway_process()
    source = random_file(tmp_path / "parallel.bin", 3 * MiB + 7)
    url = run_cli(upload_args(gw, source, "--parallel", "3", "--chunk-size", str(MiB)),
                  tmp_path)
    assert url.startswith(gw.url)
    assert_delivered(gw, url, source, "parallel.bin")
