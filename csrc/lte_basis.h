// Per-query math of LTE's query step, shared by the CPU and the CUDA kernels.
//
// Torch-free and templated on the compute type T (float or double), so that the CPU tests
// exercise exactly the arithmetic the GPU runs. Forward functions come with their
// vector-Jacobian products. docs/query-step.md states exactly what they compute.
//
// Three steps (rounding, argument reduction, quadrant) have a device form, the one verified on a
// GPU, and a host form that vectorises better on x86; both give the same bits. Defining
// LTE_DEVICE_FORMS compiles the device forms for the host (tests/test_host_forms.py does).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// Forced inline: the CPU channel loops only vectorise with the whole chain inlined.
#if defined(__CUDACC__)
#define LTE_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define LTE_HD inline __attribute__((always_inline))
#else
#define LTE_HD inline
#endif

namespace lte {

constexpr int kNeighbours = 4;

// a * b + c rounded once. The build turns implicit contraction off on both devices
// (-ffp-contract=off, --fmad=false), so fused multiply-adds happen exactly where these calls
// stand and the CPU and the GPU round every operation alike.
LTE_HD float mul_add(float a, float b, float c) { return fmaf(a, b, c); }
LTE_HD double mul_add(double a, double b, double c) { return fma(a, b, c); }

// Offsets (v_row, v_col) of neighbour n are (-1,-1), (-1,+1), (+1,-1), (+1,+1): bit 1 of n
// says whether the row offset is +1, bit 0 whether the column offset is.
LTE_HD int row_offset_is_positive(int n) { return (n >> 1) & 1; }
LTE_HD int col_offset_is_positive(int n) { return n & 1; }

// Geometry of one axis of the feature map. The constants are formed in double on the host and
// rounded once to T, as the published code forms them from Python floats, so float32 inputs
// pick the same pixels and centres as the published float32 code.
template <typename T>
struct Axis {
  int64_t size;
  T extent;    // size as T: scales relative coordinates to LR-pixel units
  T centre0;   // centre of pixel 0: -1 + 1/size
  T step;      // distance between centres: 2/size
  T shift[2];  // shift for offset -1 and +1: v/size + 1e-6
  T lo, hi;    // clamp bounds of the shifted coordinate: -1 + 1e-6, 1 - 1e-6
};

template <typename T>
Axis<T> make_axis(int64_t size) {
  const double r = 1.0 / static_cast<double>(size);
  const double half_cell = 2.0 / static_cast<double>(size) / 2.0;
  Axis<T> a;
  a.size = size;
  a.extent = static_cast<T>(size);
  a.centre0 = static_cast<T>(-1.0 + r);
  a.step = static_cast<T>(2.0 * r);
  a.shift[0] = static_cast<T>(-half_cell + 1e-6);
  a.shift[1] = static_cast<T>(half_cell + 1e-6);
  a.lo = static_cast<T>(-1.0 + 1e-6);
  a.hi = static_cast<T>(1.0 - 1e-6);
  return a;
}

template <typename T>
struct Grid {
  Axis<T> row, col;
};

template <typename T>
Grid<T> make_grid(int64_t height, int64_t width) {
  return Grid<T>{make_axis<T>(height), make_axis<T>(width)};
}

// Round half to even, as one vector instruction on the host and without library calls on the
// GPU, where this is the form verified on a GPU. On the device, adding and removing
// 2^(mantissa bits) leaves the nearest integer in round-to-nearest-even mode; values at or
// beyond that magnitude are integers already. On the host, rint in the default rounding mode is
// the same function; x + 0 makes -0 round to +0 as the device form does, so both devices give
// the same bits (tests/test_host_forms.py compiles the two forms side by side).
template <typename T>
struct RoundMagic;
template <>
struct RoundMagic<float> {
  static constexpr float value = 8388608.0f;  // 2^23
};
template <>
struct RoundMagic<double> {
  static constexpr double value = 4503599627370496.0;  // 2^52
};

template <typename T>
LTE_HD T round_half_even(T x) {
#if defined(__CUDA_ARCH__) || defined(LTE_DEVICE_FORMS)
  const T magic = RoundMagic<T>::value;
  // Both arms are computed and then selected, so the compiler needs no branch.
  const T ax = x < T(0) ? -x : x;
  const T rounded = (ax + magic) - magic;
  const T r = ax < magic ? rounded : ax;
  return x < T(0) ? -r : r;
#else
  return std::rint(x + T(0));
#endif
}

// Index of the pixel whose centre is nearest to the shifted coordinate c, exactly as
// grid_sample(mode='nearest', align_corners=False) picks it: round(((c + 1) * size - 1) / 2),
// half to even. Shifted coordinates are clamped into the map; a NaN coordinate picks pixel 0
// (its outputs are NaN through the relative coordinate).
template <typename T>
LTE_HD int64_t nearest_index(T c, const Axis<T>& a) {
  const T x = round_half_even(((c + T(1)) * a.extent - T(1)) / T(2));
  if (!(x > T(0))) return 0;
  const int64_t i = static_cast<int64_t>(x);
  return i < a.size ? i : a.size - 1;
}

// One neighbour of a query along one axis: its pixel index and the query's offset from that
// pixel's centre in LR-pixel units (rel = (coord - centre) * size, from the unshifted coord).
template <typename T>
struct AxisNeighbour {
  int64_t index;
  T rel;
};

template <typename T>
LTE_HD AxisNeighbour<T> locate_on_axis(T coord, int positive_offset, const Axis<T>& a) {
  T shifted = coord + a.shift[positive_offset];
  shifted = shifted < a.lo ? a.lo : (shifted > a.hi ? a.hi : shifted);
  const int64_t index = nearest_index(shifted, a);
  const T centre = a.centre0 + a.step * static_cast<T>(index);
  return {index, (coord - centre) * a.extent};
}

template <typename T>
struct Neighbour {
  int64_t pixel;  // row * width + col in the feature map
  T rel_row, rel_col;
};

template <typename T>
LTE_HD Neighbour<T> combine_axes(const AxisNeighbour<T>& r, const AxisNeighbour<T>& c,
                                 const Grid<T>& g) {
  return {r.index * g.col.size + c.index, r.rel, c.rel};
}

template <typename T>
LTE_HD Neighbour<T> locate_neighbour(T coord_row, T coord_col, int n, const Grid<T>& g) {
  return combine_axes(locate_on_axis(coord_row, row_offset_is_positive(n), g.row),
                      locate_on_axis(coord_col, col_offset_is_positive(n), g.col), g);
}

// All four neighbours of a query from two locations per axis (the same values as
// locate_neighbour for n = 0..3).
template <typename T>
LTE_HD void locate_neighbours(T coord_row, T coord_col, const Grid<T>& g,
                              Neighbour<T> (&nb)[kNeighbours]) {
  const AxisNeighbour<T> rows[2] = {locate_on_axis(coord_row, 0, g.row),
                                    locate_on_axis(coord_row, 1, g.row)};
  const AxisNeighbour<T> cols[2] = {locate_on_axis(coord_col, 0, g.col),
                                    locate_on_axis(coord_col, 1, g.col)};
  for (int n = 0; n < kNeighbours; ++n) {
    nb[n] = combine_axes(rows[row_offset_is_positive(n)], cols[col_offset_is_positive(n)], g);
  }
}

// Bilinear-style ensemble weights: each neighbour is weighted by the area |rel_row * rel_col|
// (+1e-9) of the diagonally opposite neighbour, normalised by the total. Coordinates and cells
// get no gradient, so this has no VJP.
template <typename T>
LTE_HD void area_weights(const Neighbour<T> (&nb)[kNeighbours], T (&weights)[kNeighbours]) {
  T area[kNeighbours];
  for (int n = 0; n < kNeighbours; ++n) {
    const T a = nb[n].rel_row * nb[n].rel_col;
    area[n] = (a < T(0) ? -a : a) + T(1e-9);
  }
  const T total = area[0] + area[1] + area[2] + area[3];
  for (int n = 0; n < kNeighbours; ++n) weights[n] = area[kNeighbours - 1 - n] / total;
}

// Phase of frequency pair k from the query's cell in LR-pixel units (rel_cell = cell * size):
// phase.weight[k, 0] * rel_cell_row + phase.weight[k, 1] * rel_cell_col.
template <typename T>
LTE_HD T phase_value(T weight_row, T weight_col, T rel_cell_row, T rel_cell_col) {
  return mul_add(weight_col, rel_cell_col, weight_row * rel_cell_row);
}

template <typename T>
LTE_HD void phase_vjp(T grad_phase, T rel_cell_row, T rel_cell_col, T& grad_weight_row,
                      T& grad_weight_col) {
  grad_weight_row = mul_add(grad_phase, rel_cell_row, grad_weight_row);
  grad_weight_col = mul_add(grad_phase, rel_cell_col, grad_weight_col);
}

// sin(pi r) and cos(pi r) for |r| <= 1/4 by Taylor polynomials in r^2, truncated where the
// remainder is below half an ulp of the type.
LTE_HD void sincospi_reduced(float r, float& s, float& c) {
  const float r2 = r * r;
  float sp = mul_add(r2, 0.0821458866f, -0.599264529f);
  sp = mul_add(r2, sp, 2.55016404f);
  sp = mul_add(r2, sp, -5.16771278f);
  sp = mul_add(r2, sp, 3.14159265f);
  s = r * sp;
  float cp = mul_add(r2, -0.0258068914f, 0.235330630f);
  cp = mul_add(r2, cp, -1.33526277f);
  cp = mul_add(r2, cp, 4.05871213f);
  cp = mul_add(r2, cp, -4.93480220f);
  c = mul_add(r2, cp, 1.0f);
}

LTE_HD void sincospi_reduced(double r, double& s, double& c) {
  const double r2 = r * r;
  double sp = mul_add(r2, 7.952054001475508e-07, -2.1915353447830204e-05);
  sp = mul_add(r2, sp, 0.00046630280576761234);
  sp = mul_add(r2, sp, -0.007370430945714348);
  sp = mul_add(r2, sp, 0.08214588661112819);
  sp = mul_add(r2, sp, -0.5992645293207919);
  sp = mul_add(r2, sp, 2.550164039877345);
  sp = mul_add(r2, sp, -5.167712780049969);
  sp = mul_add(r2, sp, 3.141592653589793);
  s = r * sp;
  double cp = mul_add(r2, 4.303069587032944e-06, -0.00010463810492484565);
  cp = mul_add(r2, cp, 0.001929574309403922);
  cp = mul_add(r2, cp, -0.02580689139001405);
  cp = mul_add(r2, cp, 0.23533063035889312);
  cp = mul_add(r2, cp, -1.3352627688545893);
  cp = mul_add(r2, cp, 4.058712126416768);
  cp = mul_add(r2, cp, -4.934802200544679);
  c = mul_add(r2, cp, 1.0);
}

// sin(pi x), cos(pi x) from the reduced pair sr, cr = sin(pi r), cos(pi r) of x = q/2 + r:
// quadrant q mod 4 picks and signs the pair. Branch-free, so the channel loops vectorise.
template <typename T>
LTE_HD void apply_quadrant(T q, T sr, T cr, T& s, T& c) {
#if defined(__CUDA_ARCH__) || defined(LTE_DEVICE_FORMS)
  // The GPU-verified form: q mod 4 in floating point, the selection by comparisons.
  const T m = q - T(4) * round_half_even(q * T(0.25));  // q mod 4, in {-2, -1, 0, 1, 2}
  // Non-short-circuit | keeps the selection free of branches.
  const bool odd = (m == T(1)) | (m == T(-1));
  const T a = odd ? cr : sr;
  const T b = odd ? sr : cr;
  const bool negate_sin = (m == T(2)) | (m == T(-2)) | (m == T(-1));
  const bool negate_cos = (m == T(2)) | (m == T(-2)) | (m == T(1));
  s = negate_sin ? -a : a;
  c = negate_cos ? -b : b;
#else
  // The host form: q mod 4 read from the bits of m + 1.5 * 2^(mantissa bits), whose lowest
  // mantissa bits then hold m in two's complement; signs set by XOR. Vector compares would pass
  // their masks through general registers.
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  constexpr int kSignBit = static_cast<int>(sizeof(T)) * 8 - 1;
  // q mod 4, in {-2, -1, 0, 1, 2} (exact, so one fused multiply-add); the sign of a zero m does
  // not matter here, so plain rint.
  const T m = mul_add(T(-4), std::rint(q * T(0.25)), q);
  const T shifted = m + T(1.5) * RoundMagic<T>::value;
  Bits m_bits;
  std::memcpy(&m_bits, &shifted, sizeof(T));
  const bool odd = (m_bits & 1) != 0;
  const T a = odd ? cr : sr;
  const T b = odd ? sr : cr;
  // Quadrants 2 and 3 negate the sine (bit 1 of m), quadrants 1 and 2 the cosine (bit 1 of m+1).
  const Bits negate_sin = (m_bits & 2) << (kSignBit - 1);
  const Bits negate_cos = ((m_bits + 1) & 2) << (kSignBit - 1);
  Bits a_bits, b_bits;
  std::memcpy(&a_bits, &a, sizeof(T));
  std::memcpy(&b_bits, &b, sizeof(T));
  a_bits ^= negate_sin;
  b_bits ^= negate_cos;
  std::memcpy(&s, &a_bits, sizeof(T));
  std::memcpy(&c, &b_bits, sizeof(T));
#endif
}

// sin(pi x) and cos(pi x). The argument is reduced exactly, x = q/2 + r with q an integer and
// |r| <= 1/4, so the result does not suffer from rounding pi * x first.
template <typename T>
LTE_HD void sincospi(T x, T& s, T& c) {
#if defined(__CUDA_ARCH__) || defined(LTE_DEVICE_FORMS)
  const T q = round_half_even(x * T(2));
  const T r = x - q * T(0.5);
#else
  // The host form, one instruction fewer per step: 2x + 0 and x - q/2 are exact, so a fused
  // multiply-add gives the same values (the + 0 rounds -0 to +0 as the device form does).
  const T q = std::rint(mul_add(x, T(2), T(0)));
  const T r = mul_add(q, T(-0.5), x);
#endif
  T sr, cr;
  sincospi_reduced(r, sr, cr);
  apply_quadrant(q, sr, cr, s, c);
}

// MLP input of frequency pair k of one neighbour:
//   phi = freq[2k] * rel_row + freq[2k+1] * rel_col + phase
//   x[k] = coef[k] * cos(pi phi),  x[k + C/2] = coef[k + C/2] * sin(pi phi)
template <typename T>
LTE_HD T basis_phi(T freq_row, T freq_col, T rel_row, T rel_col, T phase) {
  return mul_add(freq_col, rel_col, freq_row * rel_row) + phase;
}

template <typename T>
LTE_HD void basis_forward(T coef_cos, T coef_sin, T freq_row, T freq_col, T rel_row, T rel_col,
                          T phase, T& x_cos, T& x_sin) {
  T s, c;
  sincospi(basis_phi(freq_row, freq_col, rel_row, rel_col, phase), s, c);
  x_cos = coef_cos * c;
  x_sin = coef_sin * s;
}

// Vector-Jacobian product of basis_forward: accumulates into the coef and freq gradients and
// returns d(loss)/d(phase), which phase_vjp turns into the phase-weight gradient.
template <typename T>
LTE_HD T basis_vjp(T coef_cos, T coef_sin, T freq_row, T freq_col, T rel_row, T rel_col, T phase,
                   T grad_x_cos, T grad_x_sin, T& grad_coef_cos, T& grad_coef_sin, T& grad_freq_row,
                   T& grad_freq_col) {
  T s, c;
  sincospi(basis_phi(freq_row, freq_col, rel_row, rel_col, phase), s, c);
  grad_coef_cos = mul_add(grad_x_cos, c, grad_coef_cos);
  grad_coef_sin = mul_add(grad_x_sin, s, grad_coef_sin);
  const T pi = T(3.14159265358979323846);
  const T grad_phi = pi * mul_add(grad_x_sin * coef_sin, c, -(grad_x_cos * coef_cos * s));
  grad_freq_row = mul_add(grad_phi, rel_row, grad_freq_row);
  grad_freq_col = mul_add(grad_phi, rel_col, grad_freq_col);
  return grad_phi;
}

}  // namespace lte
