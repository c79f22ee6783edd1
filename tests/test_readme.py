"""What a reader sees first is true: the README's config keys and table schemas match the code."""

import dataclasses
import re
from pathlib import Path

import pytest

from songrec import schema
from songrec.config import Config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type):
            out += _keys(f.type, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


@pytest.mark.parametrize("key", _keys(Config))
def test_every_config_key_is_documented(key):
    assert re.search(rf"`{re.escape(key)}`", README), f"config key {key} is missing from README.md"


@pytest.mark.parametrize("name", ["SONGS", "NEIGHBORS", "EMBEDDINGS", "FEATURES", "REJECTS"])
def test_schema_tables_match_schema_py(name):
    assert schema.markdown_table(getattr(schema, name)) in README, f"README's {name} table differs from schema.py"


def test_readme_has_exactly_the_two_setup_commands():
    block = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^(make \w+)", block, flags=re.M)
    assert commands == ["make run", "make test"]
