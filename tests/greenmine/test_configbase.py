"""greenmine.configbase: strict frozen models, the identifier pattern, paths relative to the config file."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field, ValidationError

from greenmine.configbase import IDENT, ConfigModel, FileConfig
from greenmine.schemas import IDENTIFIER_PATTERN


class Item(ConfigModel):
    name: str = Field(pattern=IDENT)


class Doc(FileConfig):
    data: str = "data/x.sqlite"


def test_unknown_fields_and_changes_are_refused():
    with pytest.raises(ValidationError, match="extra"):
        Item(name="a", nmae="b")
    with pytest.raises(ValidationError):
        Item(name="a").name = "b"


@pytest.mark.parametrize("name", ["", "a b", "a/b", "x" * 65, "站点"])
def test_identifiers_are_what_a_topic_can_carry(name):
    with pytest.raises(ValidationError):
        Item(name=name)


def test_the_identifier_pattern_is_the_wire_contracts():
    assert IDENT == IDENTIFIER_PATTERN


def test_paths_resolve_against_the_config_files_folder(tmp_path):
    doc = Doc()
    assert doc.resolve("x") == Path.cwd() / "x"  # built in code: the working directory
    doc.loaded_from(tmp_path / "etc" / "server.toml")
    assert doc.resolve(doc.data) == tmp_path / "etc" / "data" / "x.sqlite"
    assert doc.resolve("/var/lib/x") == Path("/var/lib/x")
    assert doc.resolve("~/x") == Path.home() / "x"
