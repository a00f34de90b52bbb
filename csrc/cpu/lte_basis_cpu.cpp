// CPU kernels of lte_basis: loops over queries (forward) and over tasks that each own a range
// of pixels (backward), around the per-query math of lte_basis.h.
#include <sys/mman.h>
#include <unistd.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
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

// Grain sizes of the parallel loops. Forward: queries per chunk (4 entries of C values each).
// Grouping: queries per chunk whose entries are located. Backward: pixels per task; each task
// also keeps one partial sum of the phase-weight gradient.
constexpr int64_t kQueriesPerChunk = 64;
constexpr int64_t kLocateQueriesPerChunk = 256;
constexpr int64_t kPixelsPerTask = 16;

// The channel loops are compiled for AVX-512, for AVX2 with FMA and for baseline x86-64; the
// loader picks the widest the CPU runs (GCC/Clang function multiversioning). Baseline x86-64
// has no FMA instruction, so there mul_add is a libm call: same results, far slower.
#if defined(__x86_64__) && defined(__GNUC__)
#define LTE_CPU_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LTE_CPU_MULTIVERSION
#endif

// x is written once, front to back, and is usually large (4 KiB per query at C = 256). Backing
// it with transparent huge pages turns one page fault per query into one per 512 queries, which
// otherwise costs about a third of the forward time. The kernel may ignore the hint.
void advise_huge_pages(void* data, size_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr size_t kHugePage = size_t(2) << 20;
  if (bytes < 2 * kHugePage) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// Asks for the cache lines of one row of `count` values ahead of its use.
template <typename T>
inline void prefetch_row(const T* row, int64_t count) {
#if defined(__GNUC__)
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int64_t offset = 0; offset < count * static_cast<int64_t>(sizeof(T)); offset += 64) {
    __builtin_prefetch(bytes + offset);
  }
#endif
}

// float32 -> bfloat16 rounded to nearest even, the bits c10::BFloat16 gives.
void to_bfloat16_by_c10(const float* src, c10::BFloat16* dst, int64_t count) {
  for (int64_t i = 0; i < count; ++i) dst[i] = static_cast<c10::BFloat16>(src[i]);
}

// The same bits where the CPU has AVX512-BF16: 32 values at a time by vcvtne2ps2bf16; when the
// values hold a NaN or a subnormal (which the instruction would keep the payload of, or flush),
// c10's conversion rewrites them all.
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512bw,avx512dq,avx512bf16"))) void to_bfloat16(const float* src,
                                                                                 c10::BFloat16* dst,
                                                                                 int64_t count) {
  constexpr int kNanOrSubnormal = 0x01 | 0x20 | 0x80;  // vfpclassps: QNaN, subnormal, SNaN
  __mmask16 special = 0;
  int64_t i = 0;
  for (; i + 32 <= count; i += 32) {
    const __m512 low = _mm512_loadu_ps(src + i), high = _mm512_loadu_ps(src + i + 16);
    special |= _mm512_fpclass_ps_mask(low, kNanOrSubnormal) |
               _mm512_fpclass_ps_mask(high, kNanOrSubnormal);
    const __m512bh packed = _mm512_cvtne2ps_pbh(high, low);
    std::memcpy(dst + i, &packed, sizeof(packed));
  }
  const int64_t from = special ? 0 : i;
  to_bfloat16_by_c10(src + from, dst + from, count - from);
}

bool cpu_converts_bf16() {
  static const bool has =
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16");
  return has;
}
#else
void to_bfloat16(const float* src, c10::BFloat16* dst, int64_t count) {
  to_bfloat16_by_c10(src, dst, count);
}
bool cpu_converts_bf16() { return false; }
#endif

// The phase of every frequency pair for one query's cell: the same for its four neighbours.
template <typename T>
LTE_CPU_MULTIVERSION void query_phases(const T* __restrict__ phase_w, T rel_cell_row,
                                       T rel_cell_col, T* __restrict__ phase, int64_t pairs) {
  for (int64_t k = 0; k < pairs; ++k) {
    phase[k] = phase_value(phase_w[k], phase_w[pairs + k], rel_cell_row, rel_cell_col);
  }
}

// One neighbour's MLP input: all frequency pairs of one gathered pixel. The loop is branch-free
// and calls only functions compilers turn into vector instructions (rint), so it vectorises.
template <typename T, typename out_t>
LTE_CPU_MULTIVERSION void forward_channels(const T* __restrict__ coef, const T* __restrict__ freq,
                                           const T* __restrict__ phase, T rel_row, T rel_col,
                                           out_t* __restrict__ x, int64_t pairs) {
  for (int64_t k = 0; k < pairs; ++k) {
    T x_cos, x_sin;
    basis_forward(coef[k], coef[pairs + k], freq[2 * k], freq[2 * k + 1], rel_row, rel_col,
                  phase[k], x_cos, x_sin);
    x[k] = static_cast<out_t>(x_cos);
    x[pairs + k] = static_cast<out_t>(x_sin);
  }
}

// bfloat16 x from float32 features: rows computed in float32 into L1 and converted by the
// CPU's own instruction, where it has one (the vectorised loop would round by integer steps).
template <typename T, typename out_t>
bool converts_rows_natively() {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<out_t, c10::BFloat16>) {
    return cpu_converts_bf16();
  }
  return false;
}

// The four rows of x of one query from the pixels its neighbours gather (coef and freq offset
// to the query's image); float_rows: 4 x C float32 values of scratch when
// converts_rows_natively, else null.
template <typename T, typename out_t>
void forward_query_rows(const T* coef, const T* freq, const T* phase,
                        const Neighbour<T> (&nb)[kNeighbours], int64_t channels, T* float_rows,
                        out_t* x_rows) {
  const auto rows_into = [&](auto* rows) {
    for (int n = 0; n < kNeighbours; ++n) {
      const int64_t pixel = nb[n].pixel * channels;
      forward_channels(coef + pixel, freq + pixel, phase, nb[n].rel_row, nb[n].rel_col,
                       rows + n * channels, channels / 2);
    }
  };
  if constexpr (std::is_same_v<T, float> && std::is_same_v<out_t, c10::BFloat16>) {
    if (float_rows != nullptr) {
      rows_into(float_rows);
      to_bfloat16(float_rows, x_rows, kNeighbours * channels);
      return;
    }
  }
  rows_into(x_rows);
}

// Adds one (query, neighbour) entry's contribution to its pixel's gradients and to the
// task's phase-weight partial sum.
template <typename T, typename grad_t>
LTE_CPU_MULTIVERSION void backward_channels(const T* __restrict__ coef, const T* __restrict__ freq,
                                            const T* __restrict__ phase_w, T rel_row, T rel_col,
                                            T rel_cell_row, T rel_cell_col,
                                            const grad_t* __restrict__ grad_x,
                                            T* __restrict__ grad_coef, T* __restrict__ grad_freq,
                                            T* __restrict__ grad_phase_w, int64_t pairs) {
  for (int64_t k = 0; k < pairs; ++k) {
    const T phase = phase_value(phase_w[k], phase_w[pairs + k], rel_cell_row, rel_cell_col);
    const T grad_phase =
        basis_vjp(coef[k], coef[pairs + k], freq[2 * k], freq[2 * k + 1], rel_row, rel_col, phase,
                  static_cast<T>(grad_x[k]), static_cast<T>(grad_x[pairs + k]), grad_coef[k],
                  grad_coef[pairs + k], grad_freq[2 * k], grad_freq[2 * k + 1]);
    phase_vjp(grad_phase, rel_cell_row, rel_cell_col, grad_phase_w[k], grad_phase_w[pairs + k]);
  }
}

// Writes x and weights of queries [begin, end) in out_t, computing in T.
template <typename T, typename out_t>
void forward_queries(const BasisShape& shape, const KernelInputs& in, int64_t begin, int64_t end,
                     out_t* x, out_t* weights) {
  const Grid<T> grid = make_grid<T>(shape.height, shape.width);
  const int64_t channels = shape.channels;
  const T* coef = in.coef.const_data_ptr<T>();
  const T* freq = in.freq.const_data_ptr<T>();
  const T* phase_w = in.phase_w.const_data_ptr<T>();
  const T* coord = in.coord.const_data_ptr<T>();
  const T* cell = in.cell.const_data_ptr<T>();
  std::vector<T> phase(shape.pairs());
  std::vector<T> float_rows(converts_rows_natively<T, out_t>() ? kNeighbours * channels : 0);
  T* scratch = float_rows.empty() ? nullptr : float_rows.data();
  for (int64_t bq = begin; bq < end; ++bq) {
    query_phases(phase_w, cell[2 * bq] * grid.row.extent, cell[2 * bq + 1] * grid.col.extent,
                 phase.data(), shape.pairs());
    Neighbour<T> nb[kNeighbours];
    locate_neighbours(coord[2 * bq], coord[2 * bq + 1], grid, nb);
    const int64_t image_offset = (bq / shape.queries) * shape.pixels() * channels;
    forward_query_rows(coef + image_offset, freq + image_offset, phase.data(), nb, channels,
                       scratch, x + bq * kNeighbours * channels);
    T w[kNeighbours];
    area_weights(nb, w);
    for (int n = 0; n < kNeighbours; ++n) weights[bq * kNeighbours + n] = static_cast<out_t>(w[n]);
  }
}

// x and weights are written in out_dtype (default: coef's dtype). The compute type follows from
// it: checked_out_dtype allows only pairs with one compute type.
std::tuple<at::Tensor, at::Tensor> lte_basis_cpu(const at::Tensor& coef, const at::Tensor& freq,
                                                 const at::Tensor& phase_weight,
                                                 const at::Tensor& coord, const at::Tensor& cell,
                                                 std::optional<at::ScalarType> out_dtype) {
  const BasisShape shape = checked_shape(coef, freq, phase_weight, coord, cell);
  const auto options = coef.options().dtype(checked_out_dtype(coef, out_dtype));
  at::Tensor x = at::empty({shape.batch, shape.queries, kNeighbours, shape.channels}, options);
  at::Tensor weights = at::empty({shape.batch, shape.queries, kNeighbours}, options);
  if (x.numel() == 0) return {x, weights};
  advise_huge_pages(x.data_ptr(), x.nbytes());
  const KernelInputs in = kernel_inputs(coef, freq, phase_weight, coord, cell);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lte_basis_cpu", [&] {
    at::parallel_for(0, shape.batch_queries(), kQueriesPerChunk, [&](int64_t begin, int64_t end) {
      forward_queries<at::opmath_type<scalar_t>>(shape, in, begin, end,
                                                 x.mutable_data_ptr<scalar_t>(),
                                                 weights.mutable_data_ptr<scalar_t>());
    });
  });
  return {x, weights};
}

// Each (query, neighbour) entry's key: the global index image * h * w + pixel it gathers from.
template <typename T>
at::Tensor entry_keys(const BasisShape& shape, const KernelInputs& in) {
  const Grid<T> grid = make_grid<T>(shape.height, shape.width);
  const T* coord = in.coord.const_data_ptr<T>();
  at::Tensor keys =
      at::empty({shape.batch_queries() * kNeighbours}, in.coord.options().dtype(at::kLong));
  int64_t* key = keys.mutable_data_ptr<int64_t>();
  at::parallel_for(
      0, shape.batch_queries(), kLocateQueriesPerChunk, [&](int64_t begin, int64_t end) {
        for (int64_t bq = begin; bq < end; ++bq) {
          for (int n = 0; n < kNeighbours; ++n) {
            const Neighbour<T> nb = locate_neighbour(coord[2 * bq], coord[2 * bq + 1], n, grid);
            key[bq * kNeighbours + n] = (bq / shape.queries) * shape.pixels() + nb.pixel;
          }
        }
      });
  return keys;
}

// The groups of group_by_pixel by a counting sort: one pass over the keys, no sort.
PixelGroups counting_sort_by_pixel(const at::Tensor& keys, int64_t total_pixels) {
  const int64_t entries = keys.numel();
  const int64_t* key = keys.const_data_ptr<int64_t>();
  at::Tensor start = at::zeros({total_pixels + 1}, keys.options());
  at::Tensor order = at::empty({entries}, keys.options());
  int64_t* start_p = start.mutable_data_ptr<int64_t>();
  int64_t* order_p = order.mutable_data_ptr<int64_t>();
  for (int64_t e = 0; e < entries; ++e) ++start_p[key[e] + 1];
  for (int64_t p = 0; p < total_pixels; ++p) start_p[p + 1] += start_p[p];
  std::vector<int64_t> next(start_p, start_p + total_pixels);
  for (int64_t e = 0; e < entries; ++e) order_p[next[key[e]]++] = e;
  return {order, start};
}

// Sums the entries of pixels [p_begin, p_end) into their gradients and into one phase-weight
// partial sum, in entry order within each pixel; zeroes them first, while they are in cache.
template <typename T, typename grad_t>
void backward_pixels(const BasisShape& shape, const KernelInputs& in, const PixelGroups& groups,
                     const grad_t* grad_x, int64_t p_begin, int64_t p_end, T* grad_coef,
                     T* grad_freq, T* grad_phase_partial) {
  const Grid<T> grid = make_grid<T>(shape.height, shape.width);
  const int64_t channels = shape.channels, entries = groups.order.numel();
  const int64_t* start = groups.start.const_data_ptr<int64_t>();
  const int64_t* order = groups.order.const_data_ptr<int64_t>();
  const T* coef = in.coef.const_data_ptr<T>();
  const T* freq = in.freq.const_data_ptr<T>();
  const T* phase_w = in.phase_w.const_data_ptr<T>();
  const T* coord = in.coord.const_data_ptr<T>();
  const T* cell = in.cell.const_data_ptr<T>();
  std::fill(grad_phase_partial, grad_phase_partial + channels, T(0));
  std::fill(grad_coef + p_begin * channels, grad_coef + p_end * channels, T(0));
  std::fill(grad_freq + p_begin * channels, grad_freq + p_end * channels, T(0));
  for (int64_t p = p_begin; p < p_end; ++p) {
    for (int64_t j = start[p]; j < start[p + 1]; ++j) {
      const int64_t entry = order[j];
      // Entries are visited out of order: fetch the next one's grad_x row early.
      if (j + 1 < entries) prefetch_row(grad_x + order[j + 1] * channels, channels);
      const int64_t bq = entry / kNeighbours;
      const int n = static_cast<int>(entry % kNeighbours);
      const Neighbour<T> nb = locate_neighbour(coord[2 * bq], coord[2 * bq + 1], n, grid);
      backward_channels(coef + p * channels, freq + p * channels, phase_w, nb.rel_row, nb.rel_col,
                        cell[2 * bq] * grid.row.extent, cell[2 * bq + 1] * grid.col.extent,
                        grad_x + entry * channels, grad_coef + p * channels,
                        grad_freq + p * channels, grad_phase_partial, shape.pairs());
    }
  }
}

// Pixel-major: entries are grouped by the pixel they read, each task owns a fixed range of
// pixels and sums their entries in entry order into one phase-weight partial sum per task. No
// two tasks write the same element and every sum has a fixed order, so the result is
// deterministic and independent of the number of threads (the CUDA kernel works the same way).
// sync_free groups through group_by_pixel, the CUDA variant's grouping: same groups, same values.
// grad_x may be float16/bfloat16 for float32 features (checked_backward_shape); T follows it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> lte_basis_backward_cpu(
    const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& freq,
    const at::Tensor& phase_weight, const at::Tensor& coord, const at::Tensor& cell,
    bool sync_free) {
  const BasisShape shape = checked_backward_shape(grad_x, coef, freq, phase_weight, coord, cell);
  const auto compute_options = coef.options().dtype(compute_type(coef));
  const std::vector<int64_t> layout = {shape.batch, shape.height, shape.width, shape.channels};
  // Not zero-filled here: every task zeroes the pixels it owns (backward_pixels).
  at::Tensor grad_coef_cl = at::empty(layout, compute_options);
  at::Tensor grad_freq_cl = at::empty(layout, compute_options);
  advise_huge_pages(grad_coef_cl.data_ptr(), grad_coef_cl.nbytes());
  advise_huge_pages(grad_freq_cl.data_ptr(), grad_freq_cl.nbytes());
  const at::Tensor grad_x_c = grad_x.contiguous();
  const KernelInputs in = kernel_inputs(coef, freq, phase_weight, coord, cell);
  const int64_t total_pixels = shape.batch * shape.pixels();
  const int64_t tasks = (total_pixels + kPixelsPerTask - 1) / kPixelsPerTask;
  at::Tensor grad_phase_partial = at::empty({tasks, 2, shape.pairs()}, compute_options);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_x.scalar_type(), "lte_basis_backward_cpu", [&] {
        using T = at::opmath_type<scalar_t>;
        const at::Tensor keys = entry_keys<T>(shape, in);
        const PixelGroups groups = sync_free ? group_by_pixel(keys, total_pixels)
                                             : counting_sort_by_pixel(keys, total_pixels);
        at::parallel_for(0, tasks, 1, [&](int64_t task_begin, int64_t task_end) {
          for (int64_t task = task_begin; task < task_end; ++task) {
            const int64_t p_begin = task * kPixelsPerTask;
            backward_pixels(shape, in, groups, grad_x_c.const_data_ptr<scalar_t>(), p_begin,
                            std::min(total_pixels, p_begin + kPixelsPerTask),
                            grad_coef_cl.mutable_data_ptr<T>(), grad_freq_cl.mutable_data_ptr<T>(),
                            grad_phase_partial.mutable_data_ptr<T>() + task * shape.channels);
          }
        });
      });
  const at::Tensor grad_phase_w = grad_phase_partial.sum(0);
  return {from_channels_last(grad_coef_cl, coef.scalar_type()),
          from_channels_last(grad_freq_cl, coef.scalar_type()),
          grad_phase_w.t().to(coef.scalar_type()).contiguous()};
}

}  // namespace
}  // namespace lte

TORCH_LIBRARY_IMPL(lte_cuda, CPU, m) {
  m.impl("lte_basis", &lte::lte_basis_cpu);
  m.impl("lte_basis_backward", &lte::lte_basis_backward_cpu);
}
