// Host-side pieces shared by the CPU and CUDA kernels of lte_basis: argument checks and the
// feature layouts the kernels read. The per-query math lives in lte_basis.h.
#pragma once

#include <ATen/core/Tensor.h>

namespace lte {

// Validates the forward arguments; errors name the argument and what it received.
void check_basis_inputs(const at::Tensor& coef, const at::Tensor& freq,
                        const at::Tensor& phase_weight, const at::Tensor& coord,
                        const at::Tensor& cell);

// Validates grad_x against the forward arguments (already checked).
void check_grad_x(const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& coord);

// The type the kernels compute in: float for float16/bfloat16/float32, double for float64.
at::ScalarType compute_type(const at::Tensor& coef);

// The forward arguments as the kernels read them: contiguous, in the compute type. Feature maps
// that are already channels-last in the compute type (what LTE's convolutions give) are used
// without a copy.
struct KernelInputs {
  at::Tensor coef;     // (B, h, w, C): each pixel's channels contiguous, cosine half first
  at::Tensor freq;     // (B, h, w, C): each pixel's (row, col) pairs contiguous
  at::Tensor phase_w;  // (2, C/2): phase.weight[:, 0], then phase.weight[:, 1]
  at::Tensor coord;    // (B, Q, 2)
  at::Tensor cell;     // (B, Q, 2)
};

KernelInputs kernel_inputs(const at::Tensor& coef, const at::Tensor& freq,
                           const at::Tensor& phase_weight, const at::Tensor& coord,
                           const at::Tensor& cell);

// A gradient accumulated as (B, h, w, C) returned as (B, C, h, w) in `dtype`, channels-last
// strided (no transposing copy; fake kernels return the same strides).
at::Tensor from_channels_last(const at::Tensor& grad_cl, at::ScalarType dtype);

}  // namespace lte
