"""Training input: decode every image once into a cached uint8 array, then batches.

The cache file is keyed by the manifest's sha256, the input size and the resize
rule, so epochs (and reruns) never decode a JPEG again. The TensorFlow backend feeds
a tf.data pipeline (augmentation mapped in parallel); every other backend feeds
``ShuffledBatches``, a backend-neutral ``keras.utils.PyDataset``, and augments inside
the training step.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from cxr.files import atomic_path
from cxr.imaging import RESIZE_RULE, decode_many

DEFAULT_CACHE_DIR = Path("data/cache")


def cached_images(
    paths: list[str],
    size: int,
    manifest_sha256: str,
    cache_dir: str | Path = DEFAULT_CACHE_DIR,
) -> np.ndarray:
    """The decoded images of ``paths`` (in manifest order), from the cache or decoded once now."""
    cache_file = Path(cache_dir) / f"{manifest_sha256[:16]}-{size}px-{RESIZE_RULE}.npy"
    if cache_file.is_file():
        images = np.load(cache_file)
        if images.shape == (len(paths), size, size, 3):
            return images
    images = decode_many(paths, size)
    with atomic_path(cache_file) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, images)
    return images


class ShuffledBatches(keras.utils.PyDataset):
    """uint8 images as float32 batches, reshuffled each epoch by a seeded generator (no augmentation)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        seed: int | None = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.images, self.labels = images, labels.astype("float32")
        self.batch_size, self.shuffle = batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(images)) if shuffle else np.arange(len(images))

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __getitem__(self, index: int):
        picked = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return self.images[picked].astype("float32"), self.labels[picked]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.images))


def train_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, augmenter: keras.Sequential | None, seed: int
):
    """Shuffled, augmented, prefetched tf.data pipeline over in-memory uint8 images."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype("float32")))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype("float32"))).batch(batch_size)
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )
