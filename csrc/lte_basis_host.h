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

// coef as (B, h, w, C) in the compute type: each pixel's channels contiguous, the cosine
// half (0..C/2-1) before the sine half.
at::Tensor coef_channels_last(const at::Tensor& coef);

// freq as (B, h, w, 2, C/2) in the compute type: the interleaved pairs split so that a pixel's
// row weights freq[2k] and then its column weights freq[2k+1] are contiguous.
at::Tensor freq_channels_last(const at::Tensor& freq);

// A contiguous copy (or the tensor itself) in the compute type.
at::Tensor in_compute_type(const at::Tensor& t, const at::Tensor& coef);

// Inverse layouts of the two above, back to (B, C, h, w) contiguous in `dtype`.
at::Tensor coef_from_channels_last(const at::Tensor& grad_cl, at::ScalarType dtype);
at::Tensor freq_from_channels_last(const at::Tensor& grad_cl, at::ScalarType dtype);

}  // namespace lte
