"""``protocol`` is sans-I/O: importing it must not load aiohttp, redis or asyncio."""

from __future__ import annotations

import subprocess
import sys


def test_protocol_imports_no_io_libraries() -> None:
    code = (
        "import sys, pkgutil, importlib, protocol\n"
        "for m in pkgutil.iter_modules(protocol.__path__):\n"
        "    importlib.import_module('protocol.' + m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('aiohttp', 'redis', 'asyncio', 'aiofiles', 'multidict'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == ""
