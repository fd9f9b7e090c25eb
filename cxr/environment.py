"""Facts about the running environment that artifacts record."""

from __future__ import annotations

import platform

RECORDED_PACKAGES = (
    "cxr",
    "keras",
    "tensorflow",
    "tensorflow-cpu",
    "jax",
    "jaxlib",
    "torch",
    "numpy",
    "scikit-learn",
    "onnx",
    "tf2onnx",
    "onnxruntime",
    "onnxruntime-gpu",
)


def package_versions() -> dict[str, str]:
    """Python and the installed versions of the packages that shape a model or its scores."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions
