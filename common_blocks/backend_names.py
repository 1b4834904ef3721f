"""The names of the predicting backends and precisions: the one list the command line's choices,
the predictor and the exported runtimes all read. Imports nothing, so that the command line offers
them without loading torch.
"""

from __future__ import annotations

# The ONNX runtimes, fastest first (the order ``--backend auto`` tries them in), and the precisions
# each runs on the CPU. ONNX Runtime's CPU provider has no bf16 kernels for these networks.
RUNTIME_PRECISIONS: dict[str, tuple[str, ...]] = {"openvino": ("fp32", "bf16"), "onnxruntime": ("fp32",)}
BACKENDS: tuple[str, ...] = ("auto", "torch", *RUNTIME_PRECISIONS)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")  # of the networks; everything after them is fp32
