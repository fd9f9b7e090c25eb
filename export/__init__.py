"""Export stage (cxr.export): Keras run -> ONNX with metadata and a parity gate. Core: ``export_onnx``."""
