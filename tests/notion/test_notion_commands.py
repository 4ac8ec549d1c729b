"""``tus-gateway notion setup`` and ``notion check`` against the fake (run as its own
command), and the check that stops ``serve --sink notion`` before it listens."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main

PAGE = "0123abcd456789ef0123456789abcdef"


@pytest.fixture
def fake_url(tmp_path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fake_notion", "--port", "0", "--token", "tok", "--rate", "0",
         "--plan", "free", "--parent-page", PAGE, "--storage-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        yield str(json.loads(proc.stdout.readline())["url"])
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out + out.err


@pytest.mark.allow_blocking
@pytest.mark.parametrize("version", ["2026-03-11", "2022-06-28"])
def test_setup_then_check(fake_url: str, capsys: pytest.CaptureFixture[str],
                          version: str, tmp_path: Path) -> None:
    auth = ("--notion-token", "tok", "--notion-base-url", fake_url, "--notion-version", version)
    status, out = _run(capsys, "notion", "setup", "--parent-page", PAGE, *auth)
    assert status == 0, out
    settings = dict(line.split("=", 1) for line in out.split())
    assert settings["TUS_SINK"] == "notion"
    user, index = settings["TUS_NOTION_USER_DATABASE"], settings["TUS_NOTION_INDEX_DATABASE"]
    status, out = _run(capsys, "notion", "check", *auth, "--notion-user-database", user,
                       "--notion-index-database", index)
    assert status == 0, out
    assert "up to 5242880 bytes" in out and "problem" not in out
    assert ("data source" in out) == (version != "2022-06-28")
    # The index as user database: the check names what is wrong, and serve does not start.
    swapped = (*auth, "--notion-user-database", index, "--notion-index-database", user)
    status, out = _run(capsys, "notion", "check", *swapped)
    assert status == 1 and "problem: the user database" in out
    assert "Size must be number (missing)" in out and "Hash must be rich_text, not title" in out
    status, out = _run(capsys, "serve", "--sink", "notion", "--data-dir",
                       str(tmp_path / "data"), *swapped)
    assert status == 2 and "tus-gateway: notion: the user database" in out


@pytest.mark.allow_blocking
def test_setup_and_check_refuse_clearly(fake_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    auth = ("--notion-token", "tok", "--notion-base-url", fake_url)
    status, out = _run(capsys, "notion", "setup", "--parent-page", "1" * 32, *auth)
    assert status == 1 and "could not be created" in out and "404" in out
    status, out = _run(capsys, "notion", "setup", "--parent-page", "../x", *auth)
    assert status == 2 and "is not a Notion page id" in out
    status, out = _run(capsys, "notion", "check", "--notion-token", "wrong",
                       "--notion-base-url", fake_url)
    assert status == 1 and "the token is refused" in out and "401" in out
