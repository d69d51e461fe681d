"""The built-in models: SavedModels the install step builds with TensorFlow on the node.

Why build instead of ship: model binaries never go into the repo (size, licences, and TF Serving's
testdata is not ours to redistribute), and building them proves the node's TensorFlow works.

Layout written: ``dest/<name>/<version>/`` (TF Serving's base-path/version layout), each version
with ``assets.extra/model_card.json`` saying what the model is and where it came from.

Guarantees, because this runs in an install step that may be re-run or killed at any moment:

- Idempotent: a model whose version dir is already complete is skipped.
- Atomic: each version is built in a temp dir inside ``dest`` and ``os.rename``-d into place, so
  a model server watching ``dest/<name>/`` never sees half a version. Temp dirs live in ``dest``
  itself, not in ``dest/<name>/``, so they can never be mistaken for a version; leftovers of a
  killed build are removed by the next run.
- Exclusive: an ``flock`` on ``dest`` serialises concurrent runs (two install steps at once).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from appliance.builtin_models import half_plus_two, resnet
from appliance.errors import ApplianceError
from modelserver.tfdevices import import_tensorflow

log = logging.getLogger(__name__)

#: Prefix of the temp dirs builds happen in; anything in ``dest`` with it is a leftover.
TEMP_PREFIX = ".building-"
CARD_PATH = Path("assets.extra") / "model_card.json"


@dataclass(frozen=True)
class BuiltinModel:
    """One built-in model: where it goes and the function that writes its SavedModel.

    ``build(export_dir)`` writes a complete SavedModel into ``export_dir`` (which does not exist
    yet); it may use ``export_dir.parent`` (a private temp dir) for scratch files.
    """

    name: str
    version: str
    build: Callable[[Path], None]
    card: Mapping[str, Any]


#: name -> model; one module per model, each exporting NAME, VERSION, CARD and build().
BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.NAME: BuiltinModel(m.NAME, m.VERSION, m.build, m.CARD) for m in (half_plus_two, resnet)
}


class BuiltinModelError(ApplianceError):
    """A built-in model was asked for that does not exist, or ``dest`` is unusable."""


def build_all(dest: Path, names: Iterable[str] | None = None,
              progress: Callable[[str], object] = print) -> list[Path]:
    """Build the built-in models (all, or ``names``) into ``dest``; return their version dirs.

    Skips complete versions, so re-running the install step costs nothing. Prints one line per
    model through ``progress`` (the install script shows it to the user; tests can capture it).
    """
    dest = Path(dest)
    models = _select(names)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuiltinModelError(f"cannot create the built-in models directory {dest}: {exc}") from exc
    with _locked(dest):
        _remove_leftovers(dest)
        return [_build_one(dest, model, progress) for model in models]


def version_dir(dest: Path, name: str) -> Path:
    """Where ``build_all`` puts model ``name`` (for callers writing model configs)."""
    model = _select([name])[0]
    return Path(dest) / model.name / model.version


def is_complete(path: Path) -> bool:
    """True when ``path`` is a finished version dir: the card is written last, just before the
    rename, so its presence with a ``saved_model.pb`` means the build got to the end."""
    return (path / "saved_model.pb").is_file() and (path / CARD_PATH).is_file()


def _select(names: Iterable[str] | None) -> list[BuiltinModel]:
    if names is None:
        return list(BUILTIN_MODELS.values())
    names = list(names)
    unknown = [n for n in names if n not in BUILTIN_MODELS]
    if unknown:
        raise BuiltinModelError(f"unknown built-in model(s) {', '.join(map(repr, unknown))}; "
                                f"valid: {', '.join(sorted(BUILTIN_MODELS))}")
    return [BUILTIN_MODELS[n] for n in dict.fromkeys(names)]


def _build_one(dest: Path, model: BuiltinModel, progress: Callable[[str], object]) -> Path:
    final = dest / model.name / model.version
    label = f"{model.name}/{model.version}"
    if is_complete(final):
        progress(f"{label}: already built, skipped (0.0s)")
        return final

    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{model.name}-", dir=dest))
    try:
        export = tmp / model.version
        log.info("building %s in %s", label, tmp)
        import_tensorflow()
        model.build(export)
        seconds = time.monotonic() - start
        _write_card(export, model, seconds)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            # Incomplete (e.g. written by hand or by a pre-atomic build): move it out of the
            # watched dir first; it is deleted with the temp dir.
            log.warning("replacing incomplete version dir %s", final)
            os.rename(final, tmp / "incomplete")
        os.rename(export, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"{label}: built in {time.monotonic() - start:.1f}s")
    return final


def _write_card(export: Path, model: BuiltinModel, seconds: float) -> None:
    """Write the model card; TF Serving ignores ``assets.extra``, so it is safe to put it there."""
    import tensorflow as tf

    card = dict(model.card)
    card.update(version=model.version, tensorflow_version=tf.__version__,
                build_seconds=round(seconds, 1))
    path = export / CARD_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2) + "\n")


@contextlib.contextmanager
def _locked(dest: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the ``dest`` directory itself (no lock file to litter)."""
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_leftovers(dest: Path) -> None:
    """Delete temp dirs of builds that were killed; safe because we hold the lock."""
    for path in dest.glob(f"{TEMP_PREFIX}*"):
        log.warning("removing leftover of an interrupted build: %s", path)
        shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m appliance.builtin_models DEST [--only NAME ...]``, run by the install step."""
    parser = argparse.ArgumentParser(prog="python -m appliance.builtin_models",
                                     description="Build the built-in models into DEST.")
    parser.add_argument("dest", type=Path, metavar="DEST",
                        help="base directory; models go to DEST/<name>/<version>/")
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                        help=f"build only these (valid: {', '.join(sorted(BUILTIN_MODELS))})")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) drowns the progress lines.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        build_all(args.dest, args.only, progress=lambda line: print(line, flush=True))
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
