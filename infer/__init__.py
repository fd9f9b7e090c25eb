"""Inference stage (cxr.infer): batch scoring of image folders with onnxruntime. Core: ``score_folder``."""
