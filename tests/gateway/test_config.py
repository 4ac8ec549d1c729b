"""Configuration: defaults, environment, flags, validation, and the CLI's help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import build_parser, config_from_args
from gateway.config import (
    FsyncPolicy,
    GatewayConfig,
    env_name,
    option_name,
    parse_size,
    settings,
)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_safe() -> None:
    config = GatewayConfig().validate()
    assert config.host == "127.0.0.1" and config.port == 1080
    assert config.base_path == "/files/" and config.data_dir == Path("data")
    assert config.fsync is FsyncPolicy.ACK
    assert config.protocol_settings().max_size is None


def test_environment_then_flags() -> None:
    env = {"TUS_PORT": "2000", "TUS_MAX_SIZE": "5GiB", "TUS_EXPIRE_AFTER": "2h",
           "TUS_CORS_ORIGINS": "https://a.example, https://b.example",
           "TUS_BEHIND_PROXY": "true", "TUS_FSYNC": "off"}
    args = build_parser().parse_args(["serve", "--port", "3000", "--no-behind-proxy"])
    config = config_from_args(args, env)
    assert config.port == 3000  # the flag wins
    assert config.max_size_bytes == 5 * 1024**3
    assert config.expire_after_s == 7200.0
    assert config.cors_origins == ("https://a.example", "https://b.example")
    assert config.behind_proxy is False
    assert config.fsync is FsyncPolicy.OFF


def test_redis_url_comes_from_the_usual_variable() -> None:
    env = {"REDIS_URL": "redis://cache:6379/2", "TUS_LOCK_TTL": "3s"}
    config = config_from_args(build_parser().parse_args(["serve"]), env)
    assert config.redis.url == "redis://cache:6379/2" and config.lock_ttl_s == 3.0
    flag = build_parser().parse_args(["serve", "--redis-url", "unix:///run/redis.sock"])
    assert config_from_args(flag, env).redis.url == "unix:///run/redis.sock"


@pytest.mark.parametrize("overrides", [
    {"base_path": "files"}, {"port": 70000}, {"stall_timeout_s": 0}, {"max_size_bytes": -1},
    {"write_buffer_bytes": 1}, {"extensions": ("creation-with-upload",)},
    {"extensions": ("bogus",)}, {"cors_origins": ()}, {"redis_url": "localhost:6379"},
    {"lock_ttl_s": 0.5}, {"redis_prefix": "a{b}"}, {"sync_interval_bytes": 1024 * 1024},
])
def test_validate_refuses_impossible_values(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        GatewayConfig.from_settings(**overrides).validate()


@pytest.mark.parametrize("raw,value", [("10", 10), ("1KiB", 1024), ("5GiB", 5 * 1024**3),
                                       ("512mb", 512 * 1024**2)])
def test_sizes(raw: str, value: int) -> None:
    assert parse_size(raw) == value


@pytest.mark.parametrize("raw", ["", "ten", "5XB", "GiB"])
def test_bad_sizes(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_size(raw)


def test_help_documents_every_setting() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "--help"], capture_output=True,
                         text=True, check=True, timeout=60, cwd=ROOT).stdout
    serve = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--help"],
                           capture_output=True, text=True, check=True, timeout=60,
                           cwd=ROOT).stdout
    for f in settings():
        assert f"--{option_name(f.name)}" in out and env_name(f.name) in out
        assert f"--{option_name(f.name)}" in serve
    for flag in ("--host", "--port", "--base-path", "--data-dir", "--max-size",
                 "--expire-after", "--cors-origins", "--behind-proxy", "--fsync"):
        assert flag in out
    # A default is shown as the flag takes it: the file mode in octal, not 384.
    assert "--file-mode FILE_MODE  [TUS_FILE_MODE, default 0600]" in out


def test_bad_setting_exits_2_with_a_message() -> None:
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--max-size", "lots"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "not a size" in r.stderr


def test_second_process_on_one_data_dir_is_refused(tmp_path: Path) -> None:
    from tests.conftest import GatewayProcess

    first = GatewayProcess(tmp_path / "data")
    first.start()
    try:
        r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--port", "0",
                            "--data-dir", str(tmp_path / "data")],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.returncode == 2 and "another gateway process" in r.stderr
    finally:
        first.kill()
