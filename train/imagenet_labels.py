"""Names of the ImageNet-1k classes the conversion check cares about (index -> name).

Only these are named; other classes print as "class N". Indices are those of the
standard ILSVRC-2012 class order used by Keras, TensorFlow and PyTorch models.
"""

from __future__ import annotations

KNOWN = {
    281: "tabby",
    282: "tiger cat",
    283: "Persian cat",
    284: "Siamese cat",
    285: "Egyptian cat",
    287: "lynx",
    504: "coffee mug",
    505: "coffeepot",
    550: "espresso maker",
    967: "espresso",
    968: "cup",
    969: "eggnog",
    657: "missile",
    744: "projectile",
    812: "space shuttle",
    908: "wing",
    404: "airliner",
    895: "warplane",
}


class _Labels(dict):
    def __missing__(self, index: int) -> str:
        return f"class {index}"


IMAGENET_LABELS = _Labels(KNOWN)
