"""``tus-gateway config`` and ``tus-gateway token``, run as the real command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from gateway.auth import verify_token
from tests.conftest import ROOT

SECRET = "9c1e4b7a2f5d8e3b6a0c9f2e5d8b1a4c7e0f3b6d"


def clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without any gateway setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TUS_") and k not in ("REDIS_URL", "NOTION_TOKEN")}
    return {**env, **extra}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=clean_env(**env))


def config(*args: str, **env: str) -> dict[str, Any]:
    proc = cli("config", *args, **env)
    assert proc.returncode == 0, proc.stderr
    shown: dict[str, Any] = json.loads(proc.stdout)
    return shown


def test_config_shows_defaults_env_and_flags_with_the_token_masked() -> None:
    proc = cli("config", "--max-size", "5GiB", "--port", "3000",
               TUS_EXPIRE_AFTER="1h", TUS_PORT="2000", NOTION_TOKEN="secret")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["max_size_bytes"] == 5 * 1024**3
    assert shown["expire_after_s"] == 3600.0
    assert shown["port"] == 3000  # the flag wins over TUS_PORT
    assert shown["base_path"] == "/files/" and shown["fsync"] == "ack"  # defaults
    assert shown["notion_token"] == "***"
    assert "secret" not in proc.stdout.replace('"auth_secret"', "").replace('"link_secret"', "")


def test_config_masks_every_secret() -> None:
    bearer = config(TUS_AUTH="bearer", TUS_AUTH_TOKENS="tok-one-1234,tok-two-5678",
                    REDIS_URL="redis://worker:hunter2@cache:6379/0")
    assert bearer["auth"] == "bearer" and bearer["auth_tokens"] == ["***", "***"]
    assert bearer["redis_url"] == "redis://worker:***@cache:6379/0"
    hmac = config("--auth", "hmac", TUS_AUTH_SECRET=SECRET)
    assert hmac["auth_secret"] == "***"
    unset = config()
    assert unset["notion_token"] == "" and unset["auth_secret"] == ""  # visibly missing


@pytest.mark.parametrize("args,env,message", [
    (["--max-size", "lots"], {}, "is not a size"),
    (["--auth", "bearer"], {}, "auth bearer needs auth_tokens"),
    ([], {"TUS_AUTH": "hmac", "TUS_AUTH_SECRET": "short"}, "at least 32 characters"),
    (["--log-level", "chatty"], {}, "log_level must be one of"),
    ([], {"TUS_AUTH_TOKENS": "tok-one-1234"}, "auth is 'none'"),
])
def test_config_refuses_invalid_settings(args: list[str], env: dict[str, str],
                                         message: str) -> None:
    proc = cli("config", *args, **env)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("tus-gateway: ") and message in proc.stderr, proc.stderr


def test_token_command_mints_a_verifiable_token() -> None:
    proc = cli("token", "--ttl", "2h", "--sub", "alice", "--max-size", "5GiB",
               TUS_AUTH_SECRET=SECRET)
    assert proc.returncode == 0, proc.stderr
    claims = verify_token(SECRET, proc.stdout.strip(), now=time.time())
    assert claims.sub == "alice" and claims.max_size == 5 * 1024**3
    assert 7100 < claims.exp - time.time() <= 7200
    flag = cli("token", "--secret", SECRET)
    assert verify_token(SECRET, flag.stdout.strip(), now=time.time()).sub is None


@pytest.mark.parametrize("args", [["--secret", "short"], [], ["--secret", SECRET, "--ttl", "0"],
                                  ["--secret", SECRET, "--max-size", "huge"]])
def test_token_command_refuses_bad_input(args: list[str]) -> None:
    proc = cli("token", *args)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("tus-gateway: ")
