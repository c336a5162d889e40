"""Weight matrices as the MLX path holds them, whatever file they came from.

A linear layer's weight is one of four kinds, all applied as `x @ W.T`:
- `DenseWeight`: a plain array (F32, F16 or BF16, kept in the file's dtype);
- `AffineWeight`: MLX affine quantization (w = scale * q + bias per group of
  `group_size` along the input dimension), applied with `mx.quantized_matmul`;
- `SummedWeight`: several affine weights whose sum is the matrix (a GGUF Q6_K tensor has
  16-element groups, which MLX refuses; it is held exactly as two group-32 halves, each
  zero where the other is not; on Metal a BlockWeight reads Q6_K blocks directly);
- `BlockWeight`: on Metal, a GGUF Q4_K, Q6_K or Q8_0 matrix kept in the file's block
  layout, applied by localllm.metal_kernels' quantized matmul (no repack, Q6_K exact).

Every kind can also hand out whole rows dequantized (`rows`), so an embedding table
stays quantized and only the looked-up rows are expanded.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx


@dataclass
class DenseWeight:
    """A [out, in] matrix held as it is."""

    w: mx.array

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.w.shape)

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    def __call__(self, x: mx.array) -> mx.array:
        # x: [..., in] -> [..., out]
        return x @ self.w.T.astype(x.dtype)

    def rows(self, ids: mx.array, dtype=None) -> mx.array:
        out = self.w[ids]
        return out.astype(dtype) if dtype is not None else out

    def dequantized(self, dtype=mx.float32) -> mx.array:
        return self.w.astype(dtype)


@dataclass
class AffineWeight:
    """An MLX-quantized [out, in] matrix: `w` packed uint32 [out, in*bits/32],
    `scales` and `biases` [out, in/group_size]."""

    w: mx.array
    scales: mx.array
    biases: mx.array
    bits: int
    group_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.w.shape[0], self.w.shape[1] * 32 // self.bits)

    @property
    def nbytes(self) -> int:
        return self.w.nbytes + self.scales.nbytes + self.biases.nbytes

    def __call__(self, x: mx.array) -> mx.array:
        return mx.quantized_matmul(
            x, self.w, self.scales, self.biases, transpose=True, group_size=self.group_size, bits=self.bits
        )

    def rows(self, ids: mx.array, dtype=None) -> mx.array:
        # Scales are cast first: float16 scales dequantize to float16 values otherwise.
        dtype = dtype or self.scales.dtype
        return mx.dequantize(
            self.w[ids], self.scales[ids].astype(dtype), self.biases[ids].astype(dtype),
            group_size=self.group_size, bits=self.bits,
        )

    def dequantized(self, dtype=mx.float32) -> mx.array:
        return mx.dequantize(
            self.w, self.scales.astype(dtype), self.biases.astype(dtype), group_size=self.group_size, bits=self.bits
        )


@dataclass
class SummedWeight:
    """A matrix held as the sum of several weights of the same shape."""

    parts: tuple

    @property
    def shape(self) -> tuple[int, int]:
        return self.parts[0].shape

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def __call__(self, x: mx.array) -> mx.array:
        out = self.parts[0](x)
        for p in self.parts[1:]:
            out = out + p(x)
        return out

    def rows(self, ids: mx.array, dtype=None) -> mx.array:
        out = self.parts[0].rows(ids, dtype)
        for p in self.parts[1:]:
            out = out + p.rows(ids, dtype)
        return out

    def dequantized(self, dtype=mx.float32) -> mx.array:
        out = self.parts[0].dequantized(dtype)
        for p in self.parts[1:]:
            out = out + p.dequantized(dtype)
        return out


@dataclass
class BlockWeight:
    """A GGUF-quantized [out, in] matrix in its file's block layout: `blocks` uint8
    [out, bytes per row], `quant` one of "q4_k", "q6_k", "q8_0". Applied by the Metal
    kernel for up to 16 rows of x, else dequantized (localllm.metal_kernels.quant_matmul);
    `kernels` overrides the Metal kernels (tests run the emulator's)."""

    blocks: mx.array
    quant: str
    in_features: int
    kernels: object = None

    @property
    def shape(self) -> tuple[int, int]:
        return (self.blocks.shape[0], self.in_features)

    @property
    def nbytes(self) -> int:
        return self.blocks.nbytes

    def __call__(self, x: mx.array) -> mx.array:
        from localllm.metal_kernels.quant_matmul import quant_matmul

        return quant_matmul(x, self.blocks, self.quant, kernels=self.kernels)

    def rows(self, ids: mx.array, dtype=None) -> mx.array:
        from localllm.metal_kernels.quant_matmul import dequantize

        flat = self.blocks[ids.reshape(-1)]
        out = dequantize(flat, self.quant, self.in_features).reshape(*ids.shape, self.in_features)
        return out.astype(dtype) if dtype is not None else out

    def dequantized(self, dtype=mx.float32) -> mx.array:
        from localllm.metal_kernels.quant_matmul import dequantize

        return dequantize(self.blocks, self.quant, self.in_features).astype(dtype)


Weight = DenseWeight | AffineWeight | SummedWeight | BlockWeight


def weight_arrays(weight: Weight) -> list[mx.array]:
    """The arrays a weight holds (for evaluation and byte counts)."""
    if isinstance(weight, DenseWeight):
        return [weight.w]
    if isinstance(weight, AffineWeight):
        return [weight.w, weight.scales, weight.biases]
    if isinstance(weight, BlockWeight):
        return [weight.blocks]
    return [a for p in weight.parts for a in weight_arrays(p)]
