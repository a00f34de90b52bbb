// CUDA kernels of lte_basis: thread mappings around the per-query math of lte_basis.h.
//
// The neighbour search (pixel, relative coordinates, area weights) runs once per (query,
// neighbour) entry, not once per frequency pair (64-bit divisions included).
// docs/query-step.md states what they compute and in which order the backward sums. Forward: a
// block takes a tile of queries; a few threads locate the tile's entries into shared memory, then
// threadIdx.x walks the frequency pairs and threadIdx.y the entries, so gathers from the
// channels-last features and stores of x coalesce along the pairs, and no thread divides. Backward:
// no atomics. The entries are sorted by the pixel they read; one block then owns each pixel's
// gradient and sums its entries in sorted order, and the phase-weight gradient is reduced through
// per-block partial sums. The result is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/unique_consecutive.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../lte_basis.h"
#include "../lte_basis_host.h"

namespace lte {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
// Grid cap of the grid-stride loops: more blocks than this only add scheduling.
constexpr int64_t kMaxBlocks = int64_t(1) << 20;
// Queries per forward tile: 128 entries, so 64 (entry, pair) items per thread at C = 256.
constexpr int kTileQueries = 32;
// Most threads of a forward block along the frequency pairs; the rest of the block walks the
// tile's entries.
constexpr int64_t kMaxForwardPairThreads = 128;
// Blocks that walk the pixel segments; also the number of phase-weight partial sums.
constexpr int64_t kSegmentBlocks = 1024;

int64_t round_up_to_warp(int64_t n) { return (n + kWarp - 1) / kWarp * kWarp; }

int64_t blocks_for(int64_t items) {
  return std::min<int64_t>((items + kThreads - 1) / kThreads, kMaxBlocks);
}

// Threads per forward block: threadIdx.x over the frequency pairs (a multiple of the warp size,
// at most kMaxForwardPairThreads), threadIdx.y over the tile's entries.
dim3 forward_block(int64_t pairs) {
  const int threads_x =
      static_cast<int>(std::min<int64_t>(round_up_to_warp(pairs), kMaxForwardPairThreads));
  return dim3(threads_x, kThreads / threads_x);
}

template <typename scalar_t, typename T>
__global__ void forward_kernel(const T* __restrict__ coef, const T* __restrict__ freq,
                               const T* __restrict__ phase_w, const T* __restrict__ coord,
                               const T* __restrict__ cell, scalar_t* __restrict__ x,
                               scalar_t* __restrict__ weights, int64_t batch_queries,
                               int64_t queries, int64_t pairs, int64_t pixels, Grid<T> grid) {
  __shared__ int64_t entry_pixel[kTileQueries * kNeighbours];  // offset of the gathered row
  __shared__ T entry_rel_row[kTileQueries * kNeighbours], entry_rel_col[kTileQueries * kNeighbours];
  __shared__ T tile_rel_cell_row[kTileQueries], tile_rel_cell_col[kTileQueries];
  const int64_t channels = 2 * pairs;
  const int thread = threadIdx.y * blockDim.x + threadIdx.x;
  for (int64_t first = blockIdx.x * int64_t(kTileQueries); first < batch_queries;
       first += int64_t(gridDim.x) * kTileQueries) {
    const int tile = static_cast<int>(std::min<int64_t>(kTileQueries, batch_queries - first));
    if (thread < tile) {
      const int64_t bq = first + thread;
      Neighbour<T> nb[kNeighbours];
      for (int n = 0; n < kNeighbours; ++n) {
        nb[n] = locate_neighbour(coord[2 * bq], coord[2 * bq + 1], n, grid);
      }
      T w[kNeighbours];
      area_weights(nb, w);
      const int64_t image = (bq / queries) * pixels;
      for (int n = 0; n < kNeighbours; ++n) {
        const int e = thread * kNeighbours + n;
        entry_pixel[e] = (image + nb[n].pixel) * channels;
        entry_rel_row[e] = nb[n].rel_row;
        entry_rel_col[e] = nb[n].rel_col;
        weights[bq * kNeighbours + n] = static_cast<scalar_t>(w[n]);
      }
      tile_rel_cell_row[thread] = cell[2 * bq] * grid.row.extent;
      tile_rel_cell_col[thread] = cell[2 * bq + 1] * grid.col.extent;
    }
    __syncthreads();
    for (int e = threadIdx.y; e < tile * kNeighbours; e += blockDim.y) {
      const int q = e / kNeighbours;
      const T* coef_row = coef + entry_pixel[e];
      const T* freq_row = freq + entry_pixel[e];
      const T rel_row = entry_rel_row[e], rel_col = entry_rel_col[e];
      const T rel_cell_row = tile_rel_cell_row[q], rel_cell_col = tile_rel_cell_col[q];
      scalar_t* x_row = x + (first * kNeighbours + e) * channels;
      for (int64_t k = threadIdx.x; k < pairs; k += blockDim.x) {
        const T phase = phase_value(phase_w[k], phase_w[pairs + k], rel_cell_row, rel_cell_col);
        T x_cos, x_sin;
        basis_forward(coef_row[k], coef_row[pairs + k], freq_row[2 * k], freq_row[2 * k + 1],
                      rel_row, rel_col, phase, x_cos, x_sin);
        x_row[k] = static_cast<scalar_t>(x_cos);
        x_row[pairs + k] = static_cast<scalar_t>(x_sin);
      }
    }
    __syncthreads();  // the next tile overwrites the shared arrays
  }
}

// Each (query, neighbour) entry's key, the global index (image, pixel) it gathers from, and its
// relative coordinates, which the backward kernel reads instead of searching again.
template <typename T>
__global__ void locate_entries_kernel(const T* __restrict__ coord, int64_t* __restrict__ keys,
                                      T* __restrict__ rel, int64_t batch_queries, int64_t queries,
                                      int64_t pixels, Grid<T> grid) {
  const int64_t total = batch_queries * kNeighbours;
  for (int64_t entry = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; entry < total;
       entry += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bq = entry / kNeighbours;
    const int n = static_cast<int>(entry % kNeighbours);
    const Neighbour<T> nb = locate_neighbour(coord[2 * bq], coord[2 * bq + 1], n, grid);
    keys[entry] = (bq / queries) * pixels + nb.pixel;
    rel[2 * entry] = nb.rel_row;
    rel[2 * entry + 1] = nb.rel_col;
  }
}

// blockIdx.y and threadIdx.x pick the frequency pair k; blockIdx.x walks the segments. Each
// segment is one pixel and the sorted run of entries that read it.
template <typename scalar_t, typename T>
__global__ void backward_kernel(const scalar_t* __restrict__ grad_x, const T* __restrict__ coef,
                                const T* __restrict__ freq, const T* __restrict__ phase_w,
                                const T* __restrict__ rel, const T* __restrict__ cell,
                                const int64_t* __restrict__ segment_pixel,
                                const int64_t* __restrict__ segment_end,
                                const int64_t* __restrict__ entry_order, int64_t segments,
                                int64_t pairs, Grid<T> grid, T* __restrict__ grad_coef,
                                T* __restrict__ grad_freq, T* __restrict__ grad_phase_partial) {
  const int64_t k = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (k >= pairs) return;
  const int64_t channels = 2 * pairs;
  const T weight_row = phase_w[k], weight_col = phase_w[pairs + k];
  T grad_weight_row = 0, grad_weight_col = 0;
  for (int64_t s = blockIdx.x; s < segments; s += gridDim.x) {
    const int64_t pixel = segment_pixel[s] * channels;
    const T coef_cos = coef[pixel + k], coef_sin = coef[pixel + pairs + k];
    const T freq_row = freq[pixel + 2 * k], freq_col = freq[pixel + 2 * k + 1];
    T grad_coef_cos = 0, grad_coef_sin = 0, grad_freq_row = 0, grad_freq_col = 0;
    for (int64_t j = s == 0 ? 0 : segment_end[s - 1]; j < segment_end[s]; ++j) {
      const int64_t entry = entry_order[j];
      const int64_t bq = entry / kNeighbours;
      const T rel_row = rel[2 * entry], rel_col = rel[2 * entry + 1];
      const T rel_cell_row = cell[2 * bq] * grid.row.extent;
      const T rel_cell_col = cell[2 * bq + 1] * grid.col.extent;
      const T phase = phase_value(weight_row, weight_col, rel_cell_row, rel_cell_col);
      const T grad_phase = basis_vjp(coef_cos, coef_sin, freq_row, freq_col, rel_row, rel_col,
                                     phase, static_cast<T>(grad_x[entry * channels + k]),
                                     static_cast<T>(grad_x[entry * channels + pairs + k]),
                                     grad_coef_cos, grad_coef_sin, grad_freq_row, grad_freq_col);
      phase_vjp(grad_phase, rel_cell_row, rel_cell_col, grad_weight_row, grad_weight_col);
    }
    grad_coef[pixel + k] = grad_coef_cos;
    grad_coef[pixel + pairs + k] = grad_coef_sin;
    grad_freq[pixel + 2 * k] = grad_freq_row;
    grad_freq[pixel + 2 * k + 1] = grad_freq_col;
  }
  grad_phase_partial[(blockIdx.x * pairs + k) * 2] = grad_weight_row;
  grad_phase_partial[(blockIdx.x * pairs + k) * 2 + 1] = grad_weight_col;
}

std::tuple<at::Tensor, at::Tensor> lte_basis_cuda(const at::Tensor& coef, const at::Tensor& freq,
                                                  const at::Tensor& phase_weight,
                                                  const at::Tensor& coord, const at::Tensor& cell) {
  const BasisShape shape = checked_shape(coef, freq, phase_weight, coord, cell);
  const c10::cuda::CUDAGuard device_guard(coef.device());
  at::Tensor x =
      at::empty({shape.batch, shape.queries, kNeighbours, shape.channels}, coef.options());
  at::Tensor weights = at::empty({shape.batch, shape.queries, kNeighbours}, coef.options());
  if (x.numel() == 0) return {x, weights};

  const KernelInputs in = kernel_inputs(coef, freq, phase_weight, coord, cell);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, coef.scalar_type(), "lte_basis_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        const Grid<T> grid = make_grid<T>(shape.height, shape.width);
        const int64_t tiles = (shape.batch_queries() + kTileQueries - 1) / kTileQueries;
        forward_kernel<scalar_t, T>
            <<<std::min<int64_t>(tiles, kMaxBlocks), forward_block(shape.pairs()), 0, stream>>>(
                in.coef.const_data_ptr<T>(), in.freq.const_data_ptr<T>(),
                in.phase_w.const_data_ptr<T>(), in.coord.const_data_ptr<T>(),
                in.cell.const_data_ptr<T>(), x.mutable_data_ptr<scalar_t>(),
                weights.mutable_data_ptr<scalar_t>(), shape.batch_queries(), shape.queries,
                shape.pairs(), shape.pixels(), grid);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {x, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_basis_backward_cuda(
    const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& freq,
    const at::Tensor& phase_weight, const at::Tensor& coord, const at::Tensor& cell) {
  const BasisShape shape = checked_backward_shape(grad_x, coef, freq, phase_weight, coord, cell);
  const c10::cuda::CUDAGuard device_guard(coef.device());
  const int64_t batch = shape.batch, channels = shape.channels, pairs = shape.pairs();
  const int64_t height = shape.height, width = shape.width;
  const auto compute_options = coef.options().dtype(compute_type(coef));
  at::Tensor grad_coef_cl = at::zeros({batch, height, width, channels}, compute_options);
  at::Tensor grad_freq_cl = at::zeros({batch, height, width, channels}, compute_options);
  at::Tensor grad_phase = at::zeros({pairs, 2}, compute_options);

  if (grad_x.numel() > 0) {
    const at::Tensor grad_x_c = grad_x.contiguous();
    const KernelInputs in = kernel_inputs(coef, freq, phase_weight, coord, cell);
    const int64_t entries = shape.batch_queries() * kNeighbours;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    at::Tensor keys = at::empty({entries}, coef.options().dtype(at::kLong));
    at::Tensor rel = at::empty({entries, 2}, compute_options);

    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, coef.scalar_type(), "lte_basis_backward_cuda", [&] {
          using T = at::opmath_type<scalar_t>;
          const Grid<T> grid = make_grid<T>(height, width);
          locate_entries_kernel<T><<<blocks_for(entries), kThreads, 0, stream>>>(
              in.coord.const_data_ptr<T>(), keys.mutable_data_ptr<int64_t>(),
              rel.mutable_data_ptr<T>(), shape.batch_queries(), shape.queries, shape.pixels(),
              grid);
          C10_CUDA_KERNEL_LAUNCH_CHECK();

          // Stable sort: within a pixel, entries keep query order, so sums have a fixed order.
          const auto [sorted_keys, entry_order] = at::sort(keys, /*stable=*/true, 0, false);
          const auto [segment_pixel, unused_inverse, segment_count] =
              at::unique_consecutive(sorted_keys, false, true);
          const at::Tensor segment_end = segment_count.cumsum(0);
          const int64_t segments = segment_pixel.numel();
          const int64_t segment_blocks = std::min(segments, kSegmentBlocks);
          const int threads =
              static_cast<int>(std::min<int64_t>(kThreads, round_up_to_warp(pairs)));
          const dim3 blocks(static_cast<unsigned>(segment_blocks),
                            static_cast<unsigned>((pairs + threads - 1) / threads));
          at::Tensor grad_phase_partial = at::zeros({segment_blocks, pairs, 2}, compute_options);
          backward_kernel<scalar_t, T><<<blocks, threads, 0, stream>>>(
              grad_x_c.const_data_ptr<scalar_t>(), in.coef.const_data_ptr<T>(),
              in.freq.const_data_ptr<T>(), in.phase_w.const_data_ptr<T>(), rel.const_data_ptr<T>(),
              in.cell.const_data_ptr<T>(), segment_pixel.const_data_ptr<int64_t>(),
              segment_end.const_data_ptr<int64_t>(), entry_order.const_data_ptr<int64_t>(),
              segments, pairs, grid, grad_coef_cl.mutable_data_ptr<T>(),
              grad_freq_cl.mutable_data_ptr<T>(), grad_phase_partial.mutable_data_ptr<T>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          grad_phase = grad_phase_partial.sum(0);
        });
  }
  return {from_channels_last(grad_coef_cl, coef.scalar_type()),
          from_channels_last(grad_freq_cl, coef.scalar_type()), grad_phase.to(coef.scalar_type())};
}

}  // namespace
}  // namespace lte

TORCH_LIBRARY_IMPL(lte_cuda, CUDA, m) {
  m.impl("lte_basis", &lte::lte_basis_cuda);
  m.impl("lte_basis_backward", &lte::lte_basis_backward_cuda);
}
