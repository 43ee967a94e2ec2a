"""Triton kernels for labkit's CUDA paths.

Each module imports ``triton`` only when a kernel is first launched, so ``import labkit`` works without it. The
kernels also run on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set before ``triton`` is imported),
which is how the tests check them on machines without a GPU.
"""
