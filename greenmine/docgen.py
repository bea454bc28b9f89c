"""Generate docs/config-reference.md from the config models' Field descriptions.

The reference is generated, and a test fails when the committed file differs
from what the models say, so the docs cannot drift from the code. Regenerate:

    python -m greenmine.docgen > docs/config-reference.md
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + (
            " (optional)" if type(None) in args else ""
        )
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (list, tuple):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"list of {inner}" if origin is list else f"[{inner}]"
    if origin is dict:
        return f"table of {_type_name(args[1])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(str(m.value) for m in tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    if tp is SecretStr:
        return "secret string"
    return getattr(tp, "__name__", str(tp))


def _default(f: FieldInfo) -> str:
    if f.default_factory is not None:
        try:
            value = f.default_factory()
        except TypeError:
            return ""
        if isinstance(value, BaseModel):
            return "(section defaults)"
        return f"`{value!r}`" if value not in ([], {}) else "empty"
    if f.default is PydanticUndefined:
        return "**required**"
    if f.default is None:
        return ""
    value = f.default.value if isinstance(f.default, enum.Enum) else f.default
    return f"`{value!r}`"


def _models(root: type[BaseModel]) -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in seen:
                return
            seen.append(tp)
            for f in tp.model_fields.values():
                walk(f.annotation)
            return
        for a in typing.get_args(tp):
            walk(a)

    walk(root)
    return seen


def render_model(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    lines = [f"### {model.__name__}", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| option | type | default | description |", "|---|---|---|---|"]
    for name, f in model.model_fields.items():
        key = f.alias or name
        desc = (f.description or "").replace("|", "\\|")
        tname = _type_name(f.annotation).replace("|", "\\|")
        lines.append(f"| `{key}` | {tname} | {_default(f)} | {desc} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    from greenmine.agent.config import AgentConfig
    from greenmine.server.config import ServerConfig
    from greenmine.simulators.config import SimSiteConfig

    out = [
        "# Configuration reference",
        "",
        "Generated from the config models by `python -m greenmine.docgen`; a test keeps it in step with the code.",
        "Every file is TOML. `\"${ENV_VAR}\"` in a string is replaced by that environment variable, and "
        "`\"${cred:NAME}\"` by the systemd credential NAME (`LoadCredential=NAME:FILE`, read from "
        "`$CREDENTIALS_DIRECTORY`; see docs/operations.md).",
        "Relative paths are relative to the config file's folder. `greenmine check-config FILE` validates a file.",
        "",
    ]
    done: set[type] = set()
    for title, root in (("Agent", AgentConfig), ("Server", ServerConfig), ("Simulated site", SimSiteConfig)):
        out += [f"## {title} config (`{root.__name__}`)", ""]
        for model in _models(root):
            if model in done:
                continue
            done.add(model)
            out.append(render_model(model))
    from greenmine.agent.registermap import Profile

    out += ["## Device profiles (`config/profiles/*.toml`)", ""]
    for model in _models(Profile):
        out.append(render_model(model))
    from greenmine.server.uplink.energy.config import PlatformProfile

    out += ["## Energy platform profiles (`config/energy-platforms/*.toml`)", ""]
    for model in _models(PlatformProfile):
        out.append(render_model(model))
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
