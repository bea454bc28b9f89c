"""What every config model shares: the strict base, the identifier pattern, and paths relative to the file.

- `ConfigModel`: `extra="forbid"` (a typo fails at load) and frozen (a loaded
  config is not changed behind the code's back).
- `IDENT`: the pattern of every name that ends up in a topic, a tag or a file name (sites,
  agents, buses, devices, registers, metrics). It is the wire contract's identifier pattern
  (`greenmine.schemas.IDENTIFIER_PATTERN`), repeated here because greenmine/ imports only the
  standard library and pydantic; a test keeps the two equal.
- `FileConfig`: a config loaded from a file. `resolve` makes a relative path relative to that
  file's folder (the working directory when the model was built in code), so a config and its
  data files can be moved together.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, PrivateAttr

from greenmine.configfile import resolve_path

IDENT = r"^[A-Za-z0-9_-]{1,64}$"


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileConfig(ConfigModel):
    _path: Path | None = PrivateAttr(default=None)

    def loaded_from(self, path: Path | str) -> None:
        """Remember the file this config was read from (the loaders call this)."""
        # a private attribute, so setting it is allowed on a frozen model
        self._path = Path(path)

    def resolve(self, value: str | Path) -> Path:
        """A path from this config: relative ones are relative to the config file's folder."""
        return resolve_path(value, self._path.parent if self._path else Path.cwd())
