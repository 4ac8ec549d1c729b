"""``notion_sink`` knows the gateway only through its interface.

The sink gets what it needs from the gateway through the Protocols of ``gateway.sink_api``
(the store's parts, the I/O threads, the metrics) and its constructor; the generic runner of
owed background work (``gateway.jobs``) is the one other module it uses. Any other import of
``gateway`` (its config, metrics, store internals) would tie the sink to the gateway's
insides again; this reads every import statement of the package, those only made for type
checking and those inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import notion_sink

INTERFACE = {"gateway.sink_api", "gateway.jobs"}


def _gateway_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            # ``from gateway import config`` names a module too.
            if node.module == "gateway":
                names = [f"gateway.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] == "gateway"]
    return found


def test_notion_sink_imports_only_the_interface_of_the_gateway() -> None:
    package = Path(notion_sink.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 5
    outside = [f"{path.relative_to(package.parent)}:{line}: {name}"
               for path in modules for line, name in _gateway_imports(path)
               if name not in INTERFACE]
    assert outside == []


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text("from typing import TYPE_CHECKING\n"
                      "import gateway.config\n"
                      "from gateway import metrics\n"
                      "from gateway.sink_api import Sink\n"
                      "if TYPE_CHECKING:\n"
                      "    from gateway.state.redis import RedisBackend\n"
                      "def later():\n"
                      "    from gateway.aio import IoPool\n")
    assert [name for _, name in _gateway_imports(source)] == [
        "gateway.config", "gateway.metrics", "gateway.sink_api", "gateway.state.redis",
        "gateway.aio"]
