// Prints checksums of lte_basis.h's rounding and sin/cos over a sweep of inputs. Built twice by
// tests/test_host_forms.py, once as is (the host forms the CPU kernels run) and once with
// LTE_DEVICE_FORMS (the forms the GPU runs, compiled for the host): the lines must agree.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "lte_basis.h"

namespace {

template <typename T, typename Bits>
T from_bits(Bits bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// NaNs count as one value: the forms may differ in a NaN's payload (rint quiets a signalling
// NaN, the device form passes it through), which nothing downstream reads.
template <typename T>
void mix(uint64_t& hash, T value) {
  uint64_t bits = 0;
  if (value == value)
    std::memcpy(&bits, &value, sizeof(T));
  else
    bits = 1;
  hash = (hash ^ bits) * 1099511628211ull;  // FNV-1a over whole values
}

// The quadrant boundaries k/4 for |k| <= 4096 and their neighbours on both sides.
template <typename T>
void add_quadrant_boundaries(std::vector<T>& xs) {
  for (int k = -4096; k <= 4096; ++k) {
    const T x = static_cast<T>(k) / T(4);
    xs.push_back(x);
    xs.push_back(std::nextafter(x, -std::numeric_limits<T>::infinity()));
    xs.push_back(std::nextafter(x, std::numeric_limits<T>::infinity()));
  }
}

// Signed zeros, every 61st float bit pattern (all classes: subnormals, normals, infinities,
// NaNs), the quadrant boundaries.
std::vector<float> float_inputs() {
  std::vector<float> xs = {0.0f, -0.0f};
  for (uint64_t bits = 0; bits <= 0xffffffffull; bits += 61) {
    xs.push_back(from_bits<float>(static_cast<uint32_t>(bits)));
  }
  add_quadrant_boundaries(xs);
  return xs;
}

// Signed zeros, a 64-bit multiplicative walk through the bit patterns and through values of
// moderate size, the quadrant boundaries.
std::vector<double> double_inputs() {
  std::vector<double> xs = {0.0, -0.0};
  uint64_t bits = 1;
  for (int i = 0; i < 20000000; ++i) {
    bits = bits * 6364136223846793005ull + 1442695040888963407ull;
    xs.push_back(from_bits<double>(bits));
    xs.push_back(static_cast<double>(static_cast<int64_t>(bits >> 40)) / 1024.0);
  }
  add_quadrant_boundaries(xs);
  return xs;
}

template <typename T>
void report(const char* type, const std::vector<T>& xs) {
  uint64_t round_hash = 14695981039346656037ull, sincos_hash = round_hash;
  for (const T x : xs) {
    mix(round_hash, lte::round_half_even(x));
    T s, c;
    lte::sincospi(x, s, c);
    mix(sincos_hash, s);
    mix(sincos_hash, c);
  }
  std::printf("%s inputs %zu round %016llx sincospi %016llx\n", type, xs.size(),
              static_cast<unsigned long long>(round_hash),
              static_cast<unsigned long long>(sincos_hash));
}

}  // namespace

int main() {
  report("float", float_inputs());
  report("double", double_inputs());
  return 0;
}
