"""The README's configuration reference is generated from the schema and lists every key."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance import config_reference
from appliance.config import SCHEMA
from appliance.modelsettings import MODEL_SCHEMA

README = Path(__file__).resolve().parents[2] / "README.md"


def _section(text: str) -> str:
    start = text.index(config_reference.BEGIN)
    return text[start:text.index(config_reference.END, start) + len(config_reference.END) + 1]


def test_the_readmes_reference_is_the_generated_one() -> None:
    found = _section(README.read_text(encoding="utf-8"))
    assert found == config_reference.reference(), (
        "README.md's configuration reference differs from the schema; regenerate it with\n"
        f"    {config_reference.REGENERATE}")


def test_the_reference_lists_every_key_with_its_default() -> None:
    text = config_reference.reference()
    for key in SCHEMA:
        assert f"| `{key.name}` |" in text
    for key in MODEL_SCHEMA:
        assert f"| `models.<name>.{key.name}` |" in text
    assert "| `models.<name>.labels.<label>` | (none) |" in text
    assert "| `http.port` | `8080` |" in text and "| `models.<name>.warmup` | `true` |" in text
    assert "| `s3.secret.key` | (empty) |" in text


def test_regenerating_rewrites_only_the_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{config_reference.BEGIN}\nstale\n{config_reference.END}\n\nafter\n")
    assert config_reference.main([str(readme)]) == 0
    assert readme.read_text() == f"# x\n\nbefore\n\n{config_reference.reference()}\nafter\n"
    assert config_reference.main([str(readme)]) == 0   # a second run changes nothing
    assert readme.read_text() == f"# x\n\nbefore\n\n{config_reference.reference()}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        config_reference.main([str(readme)])
