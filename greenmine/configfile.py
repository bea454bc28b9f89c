"""Loading TOML config files: pure, no connections.

Shared by the agent, server and simulator configs:

- `${VAR}` anywhere in a string value is replaced by the environment variable
  VAR, so secrets need not live in the file (as Telegraf does). An unset
  variable is an error that names the place; `$${` escapes a literal `${`.
- `${cred:NAME}` is replaced by the content of the systemd credential NAME: the
  file `$CREDENTIALS_DIRECTORY/NAME` that a unit's `LoadCredential=NAME:/path`
  (or `SetCredentialEncrypted=`) provides, with trailing newlines removed. The
  secret then lives in a root-only file that the service reads through systemd,
  never in the environment (which `systemctl show` and /proc/PID/environ expose).
  No such credential, or no `$CREDENTIALS_DIRECTORY`, is an error naming the place.
- Validation errors are rewritten to name the exact place, with the names of
  the list items on the way, e.g.
  `devices[3] "crusher-2": registers[0] "kwh_total": scale: Input should be a valid number`.

    ConfigError(ValueError)   one file that cannot be loaded; .messages lists every problem
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

#: a credential reference that is not `${cred:NAME}` with a plain file name (no "/", not starting with ".")
_BAD_CRED = re.compile(r"(?<!\$)\$\{cred:(?![A-Za-z0-9_][A-Za-z0-9_.@-]*\})")
_VAR = re.compile(r"\$(\$)?\{(cred:)?([A-Za-z_][A-Za-z0-9_]*|(?<=cred:)[A-Za-z0-9_][A-Za-z0-9_.@-]*)\}")


class ConfigError(ValueError):
    def __init__(self, path: Path | str, messages: list[str]) -> None:
        self.path = str(path)
        self.messages = messages
        super().__init__("\n".join(f"{self.path}: {m}" for m in messages))


def place(doc: Any, loc: tuple[Any, ...]) -> str:
    """Render a pydantic error location, naming list items by their `name` (or `id`)."""
    parts: list[str] = []
    node = doc
    for key in loc:
        if isinstance(key, int) and parts:
            parts[-1] += f"[{key}]"
        else:
            parts.append(str(key))
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            node = None
        if isinstance(key, int) and isinstance(node, dict):
            name = node.get("name") or node.get("id")
            if isinstance(name, str):
                parts[-1] += f' "{name}"'
    return ": ".join(parts) if parts else "<top level>"


def format_validation_error(exc: ValidationError, doc: Any) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (typo?)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        elif msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, ") :]
        out.append(f"{place(doc, loc)}: {msg}" if loc else msg)
    return out


def credential(name: str, env: Mapping[str, str]) -> str:
    """The systemd credential NAME (`$CREDENTIALS_DIRECTORY/NAME`), trailing newlines removed. Raises LookupError."""
    folder = env.get("CREDENTIALS_DIRECTORY")
    if not folder:
        raise LookupError(f"credential {name}: CREDENTIALS_DIRECTORY is not set (give the unit LoadCredential={name}:FILE)")
    try:
        return (Path(folder) / name).read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        raise LookupError(f"credential {name}: no such credential in $CREDENTIALS_DIRECTORY "
                          f"(give the unit LoadCredential={name}:FILE)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LookupError(f"credential {name}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def _expand(node: Any, where: str, env: Mapping[str, str], errors: list[str], missing_ok: bool) -> Any:
    if isinstance(node, str):
        if _BAD_CRED.search(node):
            errors.append(f"{where}: not a credential reference: use ${{cred:NAME}}, NAME a file name in "
                          "$CREDENTIALS_DIRECTORY (letters, digits, _ . @ -)")
            return ""

        def sub(m: re.Match[str]) -> str:
            cred, name = m.group(2), m.group(3)
            if m.group(1):  # $${VAR} -> literal ${VAR}
                return "${" + (cred or "") + name + "}"
            if cred:
                try:
                    return credential(name, env)
                except LookupError as exc:
                    if not missing_ok:
                        errors.append(f"{where}: {exc}")
                    return ""
            if name not in env:
                if not missing_ok:
                    errors.append(f"{where}: environment variable {name} is not set")
                return ""
            return env[name]

        return _VAR.sub(sub, node)
    if isinstance(node, dict):
        return {k: _expand(v, f"{where}.{k}" if where else k, env, errors, missing_ok) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{where}[{i}]", env, errors, missing_ok) for i, v in enumerate(node)]
    return node


def read_toml(path: Path | str, env: Mapping[str, str] | None = None, *, missing_ok: bool = False) -> dict[str, Any]:
    """Read a TOML file and expand `${VAR}` and `${cred:NAME}` references. Raises ConfigError.

    missing_ok: an unset variable or a missing credential reads as "" instead of being an error
    (check-config uses it to go on and report the file's other problems in the same run)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [f"not UTF-8 text: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"TOML syntax error: {exc}"]) from None
    errors: list[str] = []
    doc = _expand(doc, "", dict(os.environ) if env is None else env, errors, missing_ok)
    if errors:
        raise ConfigError(path, errors)
    return doc


def load_model(model: type, path: Path | str, *, context: dict[str, Any] | None = None, doc: dict | None = None):
    """Read and validate one config file into `model`. Raises ConfigError naming every problem."""
    if doc is None:
        doc = read_toml(path)
    field = getattr(model, "model_fields", {}).get("kind")
    expected = getattr(field, "default", None)
    given = doc.get("kind") if isinstance(doc, dict) else None
    if isinstance(expected, str) and isinstance(given, str) and given != expected:
        article = "an" if expected[0] in "aeiou" else "a"
        raise ConfigError(path, [f'this is a {given} config (kind = "{given}"), not {article} {expected} config'])
    try:
        return model.model_validate(doc, context=context)
    except ValidationError as exc:
        raise ConfigError(path, format_validation_error(exc, doc)) from None


def resolve_path(value: str | Path, base: Path) -> Path:
    """Relative paths in a config file are relative to the file's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if hasattr(v, "isoformat"):
        return v.isoformat()
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


def _is_table(v: Any) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v))


def dump_toml(doc: dict[str, Any], _prefix: str = "") -> str:
    """Write a config document as TOML (enough for generated configs: tables, arrays of tables, scalars)."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in doc.items():
        if v is None:
            continue
        if isinstance(v, dict) and v and (_prefix == "" or any(_is_table(x) for x in v.values())):
            tables.append((k, v))  # top-level sections, and anything holding tables, get a [header]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            tables.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in tables:
        name = f"{_prefix}{_toml_key(k)}"
        if isinstance(v, dict):
            lines.append(f"\n[{name}]")
            lines.append(dump_toml(v, name + ".").rstrip("\n"))
        else:
            for item in v:
                lines.append(f"\n[[{name}]]")
                lines.append(dump_toml(item, name + ".").rstrip("\n"))
    return "\n".join(x for x in lines if x != "") + "\n"
