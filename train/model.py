"""The classifier: a keras.applications backbone (top removed) plus the seed's head.

Input contract: float 0-255 RGB pixels, (size, size, 3). keras.applications
EfficientNet rescales and normalises inside its graph, so the seed's extra 1/255
rescale would be a bug here and is not applied.
"""

from __future__ import annotations

from pathlib import Path

import keras

from cxr.artifacts.model_contract import HEAD_LAYERS
from cxr.artifacts.run_facts import ModelFacts, ParamCounts
from cxr.artifacts.training_config import TrainingConfig
from cxr.keras_layers import EQUALISER_NAME, AcquisitionEqualiser
from cxr.messages import first_line
from cxr.train.errors import WeightsUnavailableError

KERAS_B2_CACHE = Path("~/.keras/models/efficientnetb2_notop.h5").expanduser()


def _efficientnet_b2(weights: str | None, input_size: int, equalise_sigma: float = 0.0) -> keras.Model:
    kwargs = dict(include_top=False, input_shape=(input_size, input_size, 3))
    if equalise_sigma > 0:
        inputs = keras.Input((input_size, input_size, 3), name="input_layer")
        kwargs["input_tensor"] = AcquisitionEqualiser(equalise_sigma, name=EQUALISER_NAME)(inputs)
    if weights is None:
        return keras.applications.EfficientNetB2(weights=None, **kwargs)
    if weights != "imagenet":
        if not Path(weights).is_file():
            raise WeightsUnavailableError(f"weights file not found: {weights}")
        return keras.applications.EfficientNetB2(weights=str(weights), **kwargs)
    try:
        return keras.applications.EfficientNetB2(weights="imagenet", **kwargs)
    except Exception as exc:  # noqa: BLE001 - urllib/HTTP/OS errors all mean the same to the user
        reason = first_line(exc)
        raise WeightsUnavailableError(
            f"EfficientNetB2 ImageNet weights are not in the Keras cache ({KERAS_B2_CACHE}) and could not be "
            f"downloaded ({reason}); use --weights none, or --weights PATH to a local efficientnetb2_notop.h5"
        ) from None


def build_backbone(
    backbone: str, weights: str | None, input_size: int, equalise_sigma: float = 0.0
) -> keras.Model:
    """The base network without its top. ``weights``: 'imagenet', None or a file path.
    ``equalise_sigma > 0``: the fixed acquisition-equalising blur is the base's first layer."""
    if weights in ("none", "None", ""):
        weights = None
    if backbone == "efficientnet_b2":
        return _efficientnet_b2(weights, input_size, equalise_sigma)
    if backbone == "efficientnet_lite2":
        from cxr.train.lite2 import efficientnet_lite2

        return efficientnet_lite2(weights=weights, input_size=input_size, equalise_sigma=equalise_sigma)
    raise ValueError(f"unknown backbone {backbone!r}")


def add_head(base: keras.Model, name: str) -> keras.Model:
    """GAP -> Dense128 ReLU -> Dropout .3 -> Dense64 ReLU -> Dropout .2 -> Dense1 sigmoid."""
    x = keras.layers.GlobalAveragePooling2D(name="head_gap")(base.output)
    dense128, dense64, output_name = HEAD_LAYERS  # the names Grad-CAM export reads (ModelContract)
    x = keras.layers.Dense(128, activation="relu", name=dense128)(x)
    x = keras.layers.Dropout(0.3, name="head_dropout1")(x)
    x = keras.layers.Dense(64, activation="relu", name=dense64)(x)
    x = keras.layers.Dropout(0.2, name="head_dropout2")(x)
    # float32 even under a mixed-precision policy: the probability and the loss keep full precision
    output = keras.layers.Dense(1, activation="sigmoid", name=output_name, dtype="float32")(x)
    return keras.Model(base.input, output, name=name)


def backbone_layers(base: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's own layers: the weightless equaliser, where present, is not counted."""
    return [layer for layer in base.layers if layer.name != EQUALISER_NAME]


def freeze_base(base: keras.Model, n_frozen: int, freeze_bn: bool) -> None:
    for index, layer in enumerate(backbone_layers(base)):
        layer.trainable = index >= n_frozen
        if freeze_bn and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # Keras 3: a non-trainable BatchNorm runs in inference mode


def count_params(model: keras.Model) -> ParamCounts:
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return ParamCounts(trainable, non_trainable, trainable + non_trainable)


def build_classifier(config: TrainingConfig) -> tuple[keras.Model, ModelFacts]:
    """Build the model of one resolved variant config. Returns (model, facts about it)."""
    base = build_backbone(config.backbone, config.weights, config.input_size, float(config.equalise_sigma))
    n_frozen = config.frozen_layer_count(len(backbone_layers(base)))
    freeze_base(base, n_frozen, config.freeze_bn)
    model = add_head(base, name=f"{config.variant}_{config.backbone}")
    return model, ModelFacts(len(backbone_layers(base)), n_frozen, count_params(model))
