"""Test images: ``make_jpeg`` gives small, deterministic JPEG bytes for image-model tests.

Import it as ``from tests.jpeg import make_jpeg`` (pytest puts the repo root on ``sys.path``;
``tests`` is a namespace package, it has no ``__init__.py``).
"""

from __future__ import annotations


def make_jpeg(seed: int = 0, size: tuple[int, int] = (64, 64)) -> bytes:
    """A ``size`` = (height, width) RGB JPEG, the same bytes for the same ``seed``.

    A smooth gradient plus seeded noise rather than pure noise: different seeds give visibly
    different images, and the JPEG stays small (a few kB at 64x64).
    """
    import numpy as np
    import tensorflow as tf

    height, width = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1),
                     np.full((height, width), rng.integers(0, 256))], axis=-1)
    noise = rng.normal(0, 20, size=(height, width, 3))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return tf.io.encode_jpeg(pixels, quality=90).numpy()
