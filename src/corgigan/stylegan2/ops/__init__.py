"""Fused ops: each has a pure-PyTorch reference and a CUDA kernel built on first use."""
