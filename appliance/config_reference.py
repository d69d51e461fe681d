"""The README's configuration reference, generated from the schema (one source for both).

Every key's name, default and meaning lives in one place, its :class:`~appliance.configkeys.Key`
(``config.SCHEMA`` for the node's keys, ``modelsettings.MODEL_SCHEMA`` for ``models.<name>.*``);
the README's table is written from them between two markers, and a unit test fails when the
README's copy differs. To rewrite it after changing a key::

    python -m appliance.config_reference README.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable

from .config import SCHEMA
from .configkeys import Key
from .modelsettings import LABEL_DOC, LABELS, MODEL_SCHEMA, PREFIX

BEGIN = ("<!-- BEGIN config reference: generated from the schema in appliance/config.py and "
         "appliance/modelsettings.py by `python -m appliance.config_reference README.md` -->")
END = "<!-- END config reference -->"
REGENERATE = "python -m appliance.config_reference README.md"


def _default(value: Any) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`" if value != "" else "(empty)"


def _table(rows: Iterable[tuple[str, Any, str]]) -> list[str]:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {default} | {doc.replace('|', '/')} |" for name, default, doc in rows]
    return lines


def _rows(keys: Iterable[Key], prefix: str = "") -> list[tuple[str, str, str]]:
    return [(prefix + key.name, _default(key.default), key.doc) for key in keys]


def reference() -> str:
    """The reference section: the node's keys, then the per-model keys."""
    model = f"{PREFIX}.<name>."
    per_model = _rows(MODEL_SCHEMA, model)
    after = [row[0] for row in per_model].index(f"{model}versions") + 1   # labels go with versions
    per_model.insert(after, (f"{model}{LABELS}.<label>", "(none)", LABEL_DOC))
    lines = [BEGIN, "", *_table(_rows(SCHEMA)), "",
             f"Per-model keys, `{model}<key>`, for a `<name>` listed in `model.name` (a model "
             "without a section has every default):", "", *_table(per_model), "", END]
    return "\n".join(lines) + "\n"


def replaced(text: str) -> str:
    """``text`` (the README) with its reference section regenerated."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no reference section: the README needs the markers\n{BEGIN}\n{END}")
    rest = text[end + len(END):]
    return text[:start] + reference() + (rest[1:] if rest.startswith("\n") else rest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.config_reference",
                                     description="Rewrite the configuration reference in a README.")
    parser.add_argument("readme", type=Path, help="the README.md holding the reference markers")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = replaced(text)
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
    print(f"{'rewrote' if new != text else 'unchanged'}: the configuration reference in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
