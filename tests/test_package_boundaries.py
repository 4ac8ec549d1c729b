"""The two packages beside the gateway stand on their own.

``tus_client`` is a client: it must run where the server is not installed, so it may share
the pure ``protocol`` package but never load ``gateway`` or ``notion_sink``. ``fake_notion``
is the yardstick of the Notion sink: if it read the sink's own tables, a mistake in them
would pass its tests, so it must load neither. And ``tus-gateway fake-notion`` without the
fake installed says how to install it instead of failing with a traceback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SERVER_PACKAGES = ("gateway", "notion_sink")


def _loaded_top_levels(package: str) -> set[str]:
    """Top-level packages loaded by importing every module of ``package``."""
    code = (
        f"import sys, pkgutil, importlib, {package}\n"
        f"for m in pkgutil.iter_modules({package}.__path__):\n"
        f"    if m.name != '__main__':\n"
        f"        importlib.import_module('{package}.' + m.name)\n"
        "print(','.join(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    return set(out.stdout.strip().split(","))


@pytest.mark.parametrize("package", ["tus_client", "fake_notion"])
def test_loads_nothing_of_the_server(package: str) -> None:
    loaded = _loaded_top_levels(package)
    assert package in loaded
    assert loaded.isdisjoint(SERVER_PACKAGES), sorted(loaded & set(SERVER_PACKAGES))


def test_fake_notion_command_without_the_package() -> None:
    # A None entry in sys.modules is how Python marks a module as not importable.
    code = ("import sys; sys.modules['fake_notion'] = None\n"
            "from gateway.cli import main\n"
            "sys.exit(main(['fake-notion', '--help']))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "pip install ./fake-notion" in lines[0]
