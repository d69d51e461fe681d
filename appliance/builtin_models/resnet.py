"""``resnet``: ResNet-50 taking JPEG bytes, shaped like TF Serving's ResNet example model.

Why: TF Serving's tutorial (``resnet_client.py``, ``resnet_client_grpc.py``) serves
``resnet_v2_fp32_savedmodel_NHWC_jpg``, whose ``serving_default`` takes ``image_bytes`` (a batch
of JPEG strings) and returns ``classes`` and ``probabilities``. Shipping a model with that
interface lets users run those clients, and our benchmarks, against a real 25M-parameter
network without downloading anything.

The weights are random (this machine cannot download the ImageNet weights), seeded so that two
builds give the same model. Predictions are meaningless until the user replaces the model.

Output layout, decided to match the TF Serving example rather than Keras:

- ``probabilities``: float [-1, 1001]. Index 0 is the "background" class of the TF-slim/official
  ResNet models, always 0.0 here; indices 1..1000 are Keras' 1000 ImageNet classes in Keras'
  order, so the labels file of the TF Serving example (background + 1000) lines up.
- ``classes``: int64 [-1], the argmax over the 1001 columns, i.e. Keras' class index + 1.

Preprocessing inside the graph, per image: ``decode_image`` (JPEG, and PNG/GIF/BMP too, 3
channels), bilinear resize to 224x224 (no aspect-preserving crop: cheap and adequate for random
weights), then Keras' ResNet-50 "caffe" preprocessing (RGB->BGR, subtract the ImageNet mean).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NAME = "resnet"
VERSION = "1"
SEED = 20240601
IMAGE_SIZE = 224
NUM_CLASSES = 1001  # background + 1000 ImageNet classes, as TF Serving's example model

# Keras ResNet-50 "caffe" preprocessing: BGR channel means of ImageNet.
_BGR_MEAN = (103.939, 116.779, 123.68)

CARD: dict[str, Any] = {
    "name": NAME,
    "architecture": "ResNet-50",
    "weights": ("random (no pretrained weights can be downloaded on this machine); predictions "
                "are meaningless until you replace the model"),
    "seed": SEED,
    "signatures": {
        "serving_default": {
            "inputs": {"image_bytes": "DT_STRING [-1], one encoded JPEG (or PNG/GIF/BMP) per instance"},
            "outputs": {
                "classes": "DT_INT64 [-1], argmax of probabilities (1..1000; 0 is background)",
                "probabilities": "DT_FLOAT [-1, 1001], index 0 = background (always 0)",
            },
        },
    },
    "preprocessing": "decode, bilinear resize to 224x224, RGB->BGR, subtract ImageNet mean",
    "compatible_with": "TF Serving's resnet_v2_fp32_savedmodel_NHWC_jpg example clients",
    "source": "built by appliance.builtin_models.resnet in the install step (Keras 3 ResNet50)",
}


def build(export_dir: Path) -> None:
    """Write the SavedModel into ``export_dir``.

    Exported with ``tf.saved_model.save`` of a ``tf.Module`` that tracks the Keras model: that
    gives a plain SavedModel with a ``serve`` MetaGraph the TF1 session loader can load, and a
    signature whose input alias is the function argument's name (``image_bytes``).
    """
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"the resnet model needs the TensorFlow Keras backend, "
                           f"not {keras.backend.backend()!r} (unset KERAS_BACKEND)")

    # Same seed -> same random weights: reproducible builds, comparable benchmark runs.
    keras.utils.set_random_seed(SEED)
    model = keras.applications.ResNet50(weights=None, classes=1000,
                                        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))

    module = _serving_module(model, tf)
    tf.saved_model.save(module, str(export_dir),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    log.debug("wrote %s", export_dir)


def _serving_module(model: Any, tf: Any) -> Any:
    """A ``tf.Module`` wrapping ``model`` with the JPEG-in serving function.

    Defined inside a function because the class needs ``tf`` as a base, and importing
    TensorFlow at module import time is not allowed (slow, and side effects on import).
    """

    class ServingModule(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="resnet")
            # Track the plain tf.Variables under Keras 3's variables, not the Keras model: a
            # Keras variable exports as a *second* tf.Variable copy (keras/src/backend/
            # tensorflow/core.py, _export_to_saved_model_graph) that the checkpoint restores,
            # while the serving function reads the inner one. tf.saved_model.load copes; the
            # TF1 session loader (our server's) then fails with "Could not find variable".
            variables = [v.value for v in model.weights]
            if not all(isinstance(v, tf.Variable) for v in variables):
                raise TypeError("expected Keras 3 variables to wrap tf.Variable objects")
            self.model_variables = variables

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes: Any) -> dict[str, Any]:
            images = tf.map_fn(_decode_and_resize, image_bytes,
                               fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3],
                                                                 tf.float32))
            bgr = tf.reverse(images, axis=[-1]) - tf.constant(_BGR_MEAN, tf.float32)
            probs = model(bgr, training=False)  # closure: the model itself is not tracked
            # Column 0: the background class of TF Serving's example model, never predicted.
            probs = tf.concat([tf.zeros_like(probs[:, :1]), probs], axis=1)
            classes = tf.argmax(probs, axis=1, output_type=tf.int64)
            return {"classes": tf.identity(classes, name="classes"),
                    "probabilities": tf.identity(probs, name="probabilities")}

    def _decode_and_resize(data: Any) -> Any:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), [IMAGE_SIZE, IMAGE_SIZE])
        return tf.ensure_shape(image, [IMAGE_SIZE, IMAGE_SIZE, 3])

    return ServingModule()
