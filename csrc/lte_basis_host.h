// Host-side pieces shared by the CPU and CUDA kernels of lte_basis: argument checks and the
// feature layouts the kernels read. The per-query math lives in lte_basis.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace lte {

// The sizes of one call: features (B, C, h, w), queries (B, Q, 2).
struct BasisShape {
  int64_t batch, channels, height, width, queries;

  int64_t pairs() const { return channels / 2; }  // frequency pairs, C/2
  int64_t pixels() const { return height * width; }
  int64_t batch_queries() const { return batch * queries; }
};

// Validates the forward arguments (errors name the argument and what it received) and returns
// their sizes.
BasisShape checked_shape(const at::Tensor& coef, const at::Tensor& freq,
                         const at::Tensor& phase_weight, const at::Tensor& coord,
                         const at::Tensor& cell);

// checked_shape, plus grad_x validated against the forward arguments. grad_x has coef's dtype,
// or float16/bfloat16 when coef is float32 (the gradient of an x written by out_dtype).
BasisShape checked_backward_shape(const at::Tensor& grad_x, const at::Tensor& coef,
                                  const at::Tensor& freq, const at::Tensor& phase_weight,
                                  const at::Tensor& coord, const at::Tensor& cell);

// The type the kernels compute in: float for float16/bfloat16/float32, double for float64.
at::ScalarType compute_type(const at::Tensor& coef);

// The dtype x and weights are written in: out_dtype when given, else coef's. Checked: coef's
// dtype, or float16/bfloat16 when coef is float32 (features read at full precision, x written
// in half the bytes). Every allowed pair has one compute type, that of the output dtype.
at::ScalarType checked_out_dtype(const at::Tensor& coef, std::optional<at::ScalarType> out_dtype);

// The (query, neighbour) entries grouped by the global pixel image * h * w + pixel they read.
struct PixelGroups {
  at::Tensor order;  // (E,) int64: entry indices, by pixel, in entry order within a pixel
  at::Tensor start;  // (P + 1,) int64: order[start[p] .. start[p + 1]] read global pixel p
};

// Groups entries by their keys (E,) int64 in [0, total_pixels) on the keys' device, by a stable
// sort and a binary search for each pixel's first entry: every size follows from the shapes, so
// on CUDA nothing waits for a device-to-host copy. Every pixel has a group, empty or not.
PixelGroups group_by_pixel(const at::Tensor& keys, int64_t total_pixels);

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
