"""The durable-file helpers under concurrency: several worker threads saving one file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.files import atomic_write


@pytest.mark.allow_blocking
def test_concurrent_atomic_writes_of_one_file_leave_one_whole_version(tmp_path: Path) -> None:
    """The I/O pool may save one record from two threads at once (a sink and a request)."""
    target = tmp_path / "record"
    versions = [bytes([65 + i]) * (1000 + 997 * i) for i in range(8)]
    failures: list[BaseException] = []
    start = threading.Barrier(len(versions))

    def writer(data: bytes) -> None:
        try:
            start.wait()
            for _ in range(200):
                atomic_write(target, data, durable=False)
                seen = target.read_bytes()
                assert seen in versions, f"a mixed file of {len(seen)} bytes"
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert target.read_bytes() in versions
    assert [p.name for p in tmp_path.iterdir()] == ["record"], "temp files left behind"
