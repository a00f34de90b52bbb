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
#include <optional>
#include <utility>
#include <vector>

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

// Sums the entries entry_order[begin .. end), all reading the pixel at offset `pixel`, for
// frequency pair k in that order: writes the pixel's four gradient values of pair k and adds to
// the thread's phase-weight sums. The loop of backward_kernel, which keeps its own copy, word for
// word, until a GPU run shows the variant's parity: that kernel is the GPU-verified default.
template <typename scalar_t, typename T>
__device__ __forceinline__ void backward_pixel_pair(
    const scalar_t* __restrict__ grad_x, const T* __restrict__ coef, const T* __restrict__ freq,
    const T* __restrict__ rel, const T* __restrict__ cell, const int64_t* __restrict__ entry_order,
    int64_t begin, int64_t end, int64_t pixel, int64_t k, int64_t pairs, T weight_row, T weight_col,
    const Grid<T>& grid, T* __restrict__ grad_coef, T* __restrict__ grad_freq, T& grad_weight_row,
    T& grad_weight_col) {
  const int64_t channels = 2 * pairs;
  const T coef_cos = coef[pixel + k], coef_sin = coef[pixel + pairs + k];
  const T freq_row = freq[pixel + 2 * k], freq_col = freq[pixel + 2 * k + 1];
  T grad_coef_cos = 0, grad_coef_sin = 0, grad_freq_row = 0, grad_freq_col = 0;
  for (int64_t j = begin; j < end; ++j) {
    const int64_t entry = entry_order[j];
    const int64_t bq = entry / kNeighbours;
    const T rel_row = rel[2 * entry], rel_col = rel[2 * entry + 1];
    const T rel_cell_row = cell[2 * bq] * grid.row.extent;
    const T rel_cell_col = cell[2 * bq + 1] * grid.col.extent;
    const T phase = phase_value(weight_row, weight_col, rel_cell_row, rel_cell_col);
    const T grad_phase = basis_vjp(coef_cos, coef_sin, freq_row, freq_col, rel_row, rel_col, phase,
                                   static_cast<T>(grad_x[entry * channels + k]),
                                   static_cast<T>(grad_x[entry * channels + pairs + k]),
                                   grad_coef_cos, grad_coef_sin, grad_freq_row, grad_freq_col);
    phase_vjp(grad_phase, rel_cell_row, rel_cell_col, grad_weight_row, grad_weight_col);
  }
  grad_coef[pixel + k] = grad_coef_cos;
  grad_coef[pixel + pairs + k] = grad_coef_sin;
  grad_freq[pixel + 2 * k] = grad_freq_row;
  grad_freq[pixel + 2 * k + 1] = grad_freq_col;
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

// The sync-free variant of backward_kernel: blockIdx.x walks every pixel of the batch, whose
// entries are entry_order[start[p] .. start[p + 1]] (group_by_pixel); a pixel that no entry
// reads gets zero gradients, so the gradients need no zero fill beforehand.
template <typename scalar_t, typename T>
__global__ void backward_pixels_kernel(
    const scalar_t* __restrict__ grad_x, const T* __restrict__ coef, const T* __restrict__ freq,
    const T* __restrict__ phase_w, const T* __restrict__ rel, const T* __restrict__ cell,
    const int64_t* __restrict__ start, const int64_t* __restrict__ entry_order,
    int64_t total_pixels, int64_t pairs, Grid<T> grid, T* __restrict__ grad_coef,
    T* __restrict__ grad_freq, T* __restrict__ grad_phase_partial) {
  const int64_t k = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (k >= pairs) return;
  const T weight_row = phase_w[k], weight_col = phase_w[pairs + k];
  T grad_weight_row = 0, grad_weight_col = 0;
  for (int64_t p = blockIdx.x; p < total_pixels; p += gridDim.x) {
    backward_pixel_pair(grad_x, coef, freq, rel, cell, entry_order, start[p], start[p + 1],
                        p * 2 * pairs, k, pairs, weight_row, weight_col, grid, grad_coef, grad_freq,
                        grad_weight_row, grad_weight_col);
  }
  grad_phase_partial[(blockIdx.x * pairs + k) * 2] = grad_weight_row;
  grad_phase_partial[(blockIdx.x * pairs + k) * 2 + 1] = grad_weight_col;
}

// x and weights are written in out_dtype (default: coef's dtype); the compute type follows from
// it (checked_out_dtype), so out_dtype adds no kernel instantiation.
std::tuple<at::Tensor, at::Tensor> lte_basis_cuda(const at::Tensor& coef, const at::Tensor& freq,
                                                  const at::Tensor& phase_weight,
                                                  const at::Tensor& coord, const at::Tensor& cell,
                                                  std::optional<at::ScalarType> out_dtype) {
  const BasisShape shape = checked_shape(coef, freq, phase_weight, coord, cell);
  const c10::cuda::CUDAGuard device_guard(coef.device());
  const auto options = coef.options().dtype(checked_out_dtype(coef, out_dtype));
  at::Tensor x = at::empty({shape.batch, shape.queries, kNeighbours, shape.channels}, options);
  at::Tensor weights = at::empty({shape.batch, shape.queries, kNeighbours}, options);
  if (x.numel() == 0) return {x, weights};

  const KernelInputs in = kernel_inputs(coef, freq, phase_weight, coord, cell);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lte_basis_cuda", [&] {
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

// What both backward groupings read and write. The gradients are (B, h, w, C) in the compute
// type; grad_phase becomes (C/2, 2).
struct BackwardBuffers {
  at::Tensor grad_x, keys, rel, grad_coef, grad_freq, grad_phase;
};

// Threads (along the frequency pairs) and blocks of a backward launch over `groups` groups.
std::pair<dim3, int> backward_launch(int64_t groups, int64_t pairs) {
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, round_up_to_warp(pairs)));
  const dim3 blocks(static_cast<unsigned>(std::min(groups, kSegmentBlocks)),
                    static_cast<unsigned>((pairs + threads - 1) / threads));
  return {blocks, threads};
}

// The default grouping: the sorted entries cut into segments, one per pixel read.
// unique_consecutive learns the segment count on the host: a device-to-host copy.
template <typename scalar_t, typename T>
void backward_by_segments(const BasisShape& shape, const KernelInputs& in, const Grid<T>& grid,
                          BackwardBuffers& buf, cudaStream_t stream) {
  const int64_t pairs = shape.pairs();
  // Stable sort: within a pixel, entries keep query order, so sums have a fixed order.
  const auto [sorted_keys, entry_order] = at::sort(buf.keys, /*stable=*/true, 0, false);
  const auto [segment_pixel, unused_inverse, segment_count] =
      at::unique_consecutive(sorted_keys, false, true);
  const at::Tensor segment_end = segment_count.cumsum(0);
  const int64_t segments = segment_pixel.numel();
  const auto [blocks, threads] = backward_launch(segments, pairs);
  at::Tensor grad_phase_partial =
      at::zeros({static_cast<int64_t>(blocks.x), pairs, 2}, buf.grad_coef.options());
  backward_kernel<scalar_t, T><<<blocks, threads, 0, stream>>>(
      buf.grad_x.const_data_ptr<scalar_t>(), in.coef.const_data_ptr<T>(),
      in.freq.const_data_ptr<T>(), in.phase_w.const_data_ptr<T>(), buf.rel.const_data_ptr<T>(),
      in.cell.const_data_ptr<T>(), segment_pixel.const_data_ptr<int64_t>(),
      segment_end.const_data_ptr<int64_t>(), entry_order.const_data_ptr<int64_t>(), segments, pairs,
      grid, buf.grad_coef.mutable_data_ptr<T>(), buf.grad_freq.mutable_data_ptr<T>(),
      grad_phase_partial.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  buf.grad_phase = grad_phase_partial.sum(0);
}

// The sync-free grouping: every pixel of the batch owns a group (group_by_pixel), so every size
// and the launch follow from the shapes and nothing waits for the device.
template <typename scalar_t, typename T>
void backward_by_pixels(const BasisShape& shape, const KernelInputs& in, const Grid<T>& grid,
                        BackwardBuffers& buf, cudaStream_t stream) {
  const int64_t pairs = shape.pairs(), total_pixels = shape.batch * shape.pixels();
  const PixelGroups groups = group_by_pixel(buf.keys, total_pixels);
  const auto [blocks, threads] = backward_launch(total_pixels, pairs);
  at::Tensor grad_phase_partial =
      at::empty({static_cast<int64_t>(blocks.x), pairs, 2}, buf.grad_coef.options());
  backward_pixels_kernel<scalar_t, T><<<blocks, threads, 0, stream>>>(
      buf.grad_x.const_data_ptr<scalar_t>(), in.coef.const_data_ptr<T>(),
      in.freq.const_data_ptr<T>(), in.phase_w.const_data_ptr<T>(), buf.rel.const_data_ptr<T>(),
      in.cell.const_data_ptr<T>(), groups.start.const_data_ptr<int64_t>(),
      groups.order.const_data_ptr<int64_t>(), total_pixels, pairs, grid,
      buf.grad_coef.mutable_data_ptr<T>(), buf.grad_freq.mutable_data_ptr<T>(),
      grad_phase_partial.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  buf.grad_phase = grad_phase_partial.sum(0);
}

// grad_x may be float16/bfloat16 for float32 features (checked_backward_shape); the compute
// type follows from grad_x's dtype as it does from x's in the forward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_basis_backward_cuda(
    const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& freq,
    const at::Tensor& phase_weight, const at::Tensor& coord, const at::Tensor& cell,
    bool sync_free) {
  const BasisShape shape = checked_backward_shape(grad_x, coef, freq, phase_weight, coord, cell);
  const c10::cuda::CUDAGuard device_guard(coef.device());
  const auto compute_options = coef.options().dtype(compute_type(coef));
  const std::vector<int64_t> layout = {shape.batch, shape.height, shape.width, shape.channels};
  const int64_t entries = shape.batch_queries() * kNeighbours;
  // The sync-free kernel writes every pixel; the default one only those that entries read.
  const bool zero_fill = !sync_free || entries == 0;
  const auto gradient = [&] {
    return zero_fill ? at::zeros(layout, compute_options) : at::empty(layout, compute_options);
  };
  BackwardBuffers buf{grad_x.contiguous(),
                      at::empty({entries}, coef.options().dtype(at::kLong)),
                      at::empty({entries, 2}, compute_options),
                      gradient(),
                      gradient(),
                      at::zeros({shape.pairs(), 2}, compute_options)};
  if (entries > 0) {
    const KernelInputs in = kernel_inputs(coef, freq, phase_weight, coord, cell);
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, grad_x.scalar_type(), "lte_basis_backward_cuda", [&] {
          using T = at::opmath_type<scalar_t>;
          const Grid<T> grid = make_grid<T>(shape.height, shape.width);
          locate_entries_kernel<T><<<blocks_for(entries), kThreads, 0, stream>>>(
              in.coord.const_data_ptr<T>(), buf.keys.mutable_data_ptr<int64_t>(),
              buf.rel.mutable_data_ptr<T>(), shape.batch_queries(), shape.queries, shape.pixels(),
              grid);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          if (sync_free) {
            backward_by_pixels<scalar_t, T>(shape, in, grid, buf, stream);
          } else {
            backward_by_segments<scalar_t, T>(shape, in, grid, buf, stream);
          }
        });
  }
  return {from_channels_last(buf.grad_coef, coef.scalar_type()),
          from_channels_last(buf.grad_freq, coef.scalar_type()),
          buf.grad_phase.to(coef.scalar_type())};
}

}  // namespace
}  // namespace lte

TORCH_LIBRARY_IMPL(lte_cuda, CUDA, m) {
  m.impl("lte_basis", &lte::lte_basis_cuda);
  m.impl("lte_basis_backward", &lte::lte_basis_backward_cuda);
}
