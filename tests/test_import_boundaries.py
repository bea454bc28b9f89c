"""The import rules (README.md, "Layout"), checked on the source: the agent never imports the
server and vice versa; schemas imports only pydantic and the standard library;
every part is imported as `greenmine.<part>`, never as a bare top-level package."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

RULES = {
    # package folder: modules (or their parents) it must not import
    "agent": {"greenmine.server", "greenmine.simulators", "influxdb_client"},
    "server": {"greenmine.agent", "greenmine.simulators", "pymodbus", "apscheduler"},
    "simulators": {"greenmine.server"},
}
#: the repo's top-level folders, installed as greenmine.<name>; importing them bare is a bug
PARTS = ("agent", "server", "schemas", "simulators")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
# The simulators may use the agent's codec and register map, nothing else of it.
SIM_MAY_USE_FROM_AGENT = {"greenmine.agent.codec", "greenmine.agent.registermap"}


def imports_of(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, node.lineno))
    return out


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_boundaries(package):
    bad = []
    for path in sources(package):
        if package == "simulators" and path.name == "demo.py":
            continue  # the demo composes every part, so it may import all of them
        for name, line in imports_of(path):
            if any(_under(name, forbidden) for forbidden in RULES[package]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            if package == "simulators" and _under(name, "greenmine.agent") and name not in SIM_MAY_USE_FROM_AGENT:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            if package != "simulators" and name.startswith("greenmine.cli"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports the CLI dispatcher")
    assert not bad, "\n".join(bad)


def test_parts_are_imported_under_greenmine():
    """`import server...` would load a second copy of a module beside greenmine.server's (the repo root is on
    sys.path in tests and demos): every import names the installed package."""
    bad = []
    for folder in (*PARTS, "greenmine", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for name, line in imports_of(path):
                if name.split(".")[0] in PARTS:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name} (write greenmine.{name})")
    assert not bad, "\n".join(bad)


def test_schemas_imports_only_pydantic_and_stdlib():
    bad = []
    for path in sources("schemas"):
        for name, line in imports_of(path):
            top = name.split(".")[0]
            if top not in STDLIB and top != "pydantic" and not _under(name, "greenmine.schemas"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


def test_agent_cli_does_not_load_server_dependencies():
    """`greenmine agent --help` must not import the server's stack (or pymodbus just for help)."""
    import subprocess

    code = (
        "import sys\n"
        "from greenmine.cli import build_parser\n"
        "build_parser()\n"
        "heavy = [m for m in ('influxdb_client', 'pymodbus', 'apscheduler', 'greenmine.server.store', 'aiosmtpd') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"building the CLI imported heavy modules: {out.stdout}"
