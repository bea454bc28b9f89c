"""pyproject.toml lists every package folder, each under its installed name (greenmine.<part>...)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    dirs = tool["package-dir"]
    assert set(dirs) == {"greenmine", "greenmine.agent", "greenmine.schemas", "greenmine.server", "greenmine.simulators"}
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)

    assert set(tool["packages"]) == found, f"add to or remove from [tool.setuptools] packages: {sorted(found ^ set(tool['packages']))}"
