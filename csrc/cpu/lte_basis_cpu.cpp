// CPU kernels of lte_basis: loops over queries (forward) and over (image, channel block) tasks
// (backward) around the per-query math of lte_basis.h.
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../lte_basis.h"
#include "../lte_basis_host.h"

namespace lte {
namespace {

// Frequency pairs per backward task: enough work per task to amortise locating the neighbours,
// few enough that a single image still splits over the cores.
constexpr int64_t kPairsPerTask = 32;

// The channel loops are compiled for AVX-512, for AVX2 with FMA and for baseline x86-64; the
// loader picks the widest the CPU runs (GCC/Clang function multiversioning).
#if defined(__x86_64__) && defined(__GNUC__)
#define LTE_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LTE_CPU_MULTIVERSION
#endif

// One neighbour's MLP input: `half` frequency pairs of one gathered pixel. The loop is
// branch-free and calls no library function, so the compiler vectorises it.
template <typename T, typename out_t>
LTE_CPU_MULTIVERSION void forward_channels(const T* __restrict__ coef, const T* __restrict__ freq,
                      const T* __restrict__ phase, T rel_row, T rel_col, out_t* __restrict__ x,
                      int64_t half) {
  for (int64_t k = 0; k < half; ++k) {
    T x_cos, x_sin;
    basis_forward(coef[k], coef[half + k], freq[k], freq[half + k], rel_row, rel_col, phase[k],
                  x_cos, x_sin);
    x[k] = static_cast<out_t>(x_cos);
    x[half + k] = static_cast<out_t>(x_sin);
  }
}

template <typename T, typename grad_t>
LTE_CPU_MULTIVERSION void backward_channels(const T* __restrict__ coef, const T* __restrict__ freq,
                       const T* __restrict__ phase, T rel_row, T rel_col, T rel_cell_row,
                       T rel_cell_col, const grad_t* __restrict__ grad_x,
                       T* __restrict__ grad_coef, T* __restrict__ grad_freq,
                       T* __restrict__ grad_phase_weight, int64_t k_begin, int64_t k_end,
                       int64_t half) {
  for (int64_t k = k_begin; k < k_end; ++k) {
    const T grad_phase = basis_vjp(
        coef[k], coef[half + k], freq[k], freq[half + k], rel_row, rel_col, phase[k - k_begin],
        static_cast<T>(grad_x[k]), static_cast<T>(grad_x[half + k]), grad_coef[k],
        grad_coef[half + k], grad_freq[k], grad_freq[half + k]);
    const int64_t j = 2 * (k - k_begin);
    phase_vjp(grad_phase, rel_cell_row, rel_cell_col, grad_phase_weight[j],
              grad_phase_weight[j + 1]);
  }
}

std::tuple<at::Tensor, at::Tensor> lte_basis_cpu(const at::Tensor& coef, const at::Tensor& freq,
                                                 const at::Tensor& phase_weight,
                                                 const at::Tensor& coord,
                                                 const at::Tensor& cell) {
  check_basis_inputs(coef, freq, phase_weight, coord, cell);
  const int64_t batch = coef.size(0), channels = coef.size(1);
  const int64_t height = coef.size(2), width = coef.size(3), queries = coord.size(1);
  const int64_t half = channels / 2, pixels = height * width;
  at::Tensor x = at::empty({batch, queries, kNeighbours, channels}, coef.options());
  at::Tensor weights = at::empty({batch, queries, kNeighbours}, coef.options());
  if (x.numel() == 0 && weights.numel() == 0) return {x, weights};

  const at::Tensor coef_cl = coef_channels_last(coef);
  const at::Tensor freq_cl = freq_channels_last(freq);
  const at::Tensor phase_w = in_compute_type(phase_weight, coef);
  const at::Tensor coord_c = in_compute_type(coord, coef);
  const at::Tensor cell_c = in_compute_type(cell, coef);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, coef.scalar_type(), "lte_basis_cpu",
                                  [&] {
    using T = at::opmath_type<scalar_t>;
    const Grid<T> grid = make_grid<T>(height, width);
    const T* coef_p = coef_cl.const_data_ptr<T>();
    const T* freq_p = freq_cl.const_data_ptr<T>();
    const T* phase_w_p = phase_w.const_data_ptr<T>();
    const T* coord_p = coord_c.const_data_ptr<T>();
    const T* cell_p = cell_c.const_data_ptr<T>();
    scalar_t* x_p = x.mutable_data_ptr<scalar_t>();
    scalar_t* weights_p = weights.mutable_data_ptr<scalar_t>();

    at::parallel_for(0, batch * queries, 64, [&](int64_t begin, int64_t end) {
      std::vector<T> phase(half);
      for (int64_t bq = begin; bq < end; ++bq) {
        const int64_t b = bq / queries;
        const T coord_row = coord_p[2 * bq], coord_col = coord_p[2 * bq + 1];
        const T rel_cell_row = cell_p[2 * bq] * grid.row.size_t;
        const T rel_cell_col = cell_p[2 * bq + 1] * grid.col.size_t;
        for (int64_t k = 0; k < half; ++k) {
          phase[k] = phase_value(phase_w_p[2 * k], phase_w_p[2 * k + 1], rel_cell_row,
                                 rel_cell_col);
        }
        Neighbour<T> nb[kNeighbours];
        for (int n = 0; n < kNeighbours; ++n) {
          nb[n] = locate_neighbour(coord_row, coord_col, n, grid);
          const int64_t pixel = (b * pixels + nb[n].pixel) * channels;
          forward_channels(coef_p + pixel, freq_p + pixel, phase.data(), nb[n].rel_row,
                           nb[n].rel_col, x_p + (bq * kNeighbours + n) * channels, half);
        }
        T w[kNeighbours];
        area_weights(nb, w);
        for (int n = 0; n < kNeighbours; ++n) {
          weights_p[bq * kNeighbours + n] = static_cast<scalar_t>(w[n]);
        }
      }
    });
  });
  return {x, weights};
}

// Each task owns one image and a block of frequency pairs and walks that image's queries in
// order. No two tasks write the same gradient element and every sum runs in one fixed order,
// so the result is deterministic and does not depend on the number of threads.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_basis_backward_cpu(
    const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& freq,
    const at::Tensor& phase_weight, const at::Tensor& coord, const at::Tensor& cell) {
  check_basis_inputs(coef, freq, phase_weight, coord, cell);
  check_grad_x(grad_x, coef, coord);
  const int64_t batch = coef.size(0), channels = coef.size(1);
  const int64_t height = coef.size(2), width = coef.size(3), queries = coord.size(1);
  const int64_t half = channels / 2, pixels = height * width;
  const at::ScalarType compute = compute_type(coef);
  const auto compute_options = coef.options().dtype(compute);

  at::Tensor grad_coef_cl = at::zeros({batch, height, width, channels}, compute_options);
  at::Tensor grad_freq_cl = at::zeros({batch, height, width, 2, half}, compute_options);
  at::Tensor grad_phase_per_image = at::zeros({batch, half, 2}, compute_options);

  if (grad_x.numel() > 0) {
    const at::Tensor grad_x_c = grad_x.contiguous();
    const at::Tensor coef_cl = coef_channels_last(coef);
    const at::Tensor freq_cl = freq_channels_last(freq);
    const at::Tensor phase_w = in_compute_type(phase_weight, coef);
    const at::Tensor coord_c = in_compute_type(coord, coef);
    const at::Tensor cell_c = in_compute_type(cell, coef);
    const int64_t blocks = (half + kPairsPerTask - 1) / kPairsPerTask;

    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, coef.scalar_type(),
                                    "lte_basis_backward_cpu", [&] {
      using T = at::opmath_type<scalar_t>;
      const Grid<T> grid = make_grid<T>(height, width);
      const T* coef_p = coef_cl.const_data_ptr<T>();
      const T* freq_p = freq_cl.const_data_ptr<T>();
      const T* phase_w_p = phase_w.const_data_ptr<T>();
      const T* coord_p = coord_c.const_data_ptr<T>();
      const T* cell_p = cell_c.const_data_ptr<T>();
      const scalar_t* grad_x_p = grad_x_c.const_data_ptr<scalar_t>();
      T* grad_coef_p = grad_coef_cl.mutable_data_ptr<T>();
      T* grad_freq_p = grad_freq_cl.mutable_data_ptr<T>();
      T* grad_phase_p = grad_phase_per_image.mutable_data_ptr<T>();

      at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> phase(kPairsPerTask);
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / blocks;
          const int64_t k_begin = (task % blocks) * kPairsPerTask;
          const int64_t k_end = std::min(half, k_begin + kPairsPerTask);
          // The task owns pairs [k_begin, k_end) of this image's phase-weight gradient.
          T* grad_phase_w = grad_phase_p + (b * half + k_begin) * 2;
          for (int64_t q = 0; q < queries; ++q) {
            const int64_t bq = b * queries + q;
            const T coord_row = coord_p[2 * bq], coord_col = coord_p[2 * bq + 1];
            const T rel_cell_row = cell_p[2 * bq] * grid.row.size_t;
            const T rel_cell_col = cell_p[2 * bq + 1] * grid.col.size_t;
            for (int64_t k = k_begin; k < k_end; ++k) {
              phase[k - k_begin] = phase_value(phase_w_p[2 * k], phase_w_p[2 * k + 1],
                                               rel_cell_row, rel_cell_col);
            }
            for (int n = 0; n < kNeighbours; ++n) {
              const Neighbour<T> nb = locate_neighbour(coord_row, coord_col, n, grid);
              const int64_t pixel = (b * pixels + nb.pixel) * channels;
              backward_channels(coef_p + pixel, freq_p + pixel, phase.data(), nb.rel_row,
                                nb.rel_col, rel_cell_row, rel_cell_col,
                                grad_x_p + (bq * kNeighbours + n) * channels,
                                grad_coef_p + pixel, grad_freq_p + pixel, grad_phase_w,
                                k_begin, k_end, half);
            }
          }
        }
      });
    });
  }
  return {coef_from_channels_last(grad_coef_cl, coef.scalar_type()),
          freq_from_channels_last(grad_freq_cl, coef.scalar_type()),
          grad_phase_per_image.sum(0).to(coef.scalar_type())};
}

}  // namespace
}  // namespace lte

TORCH_LIBRARY_IMPL(lte_cuda, CPU, m) {
  m.impl("lte_basis", &lte::lte_basis_cpu);
  m.impl("lte_basis_backward", &lte::lte_basis_backward_cpu);
}
