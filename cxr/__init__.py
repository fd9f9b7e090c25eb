"""cxr: pneumonia detection on pediatric chest X-rays (train -> export -> infer -> report)."""

__version__ = "0.1.0"
CLASS_NAMES_DEFAULT = ("NORMAL", "PNEUMONIA")
