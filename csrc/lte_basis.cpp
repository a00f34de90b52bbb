// Schemas of the lte_cuda ops, the checks and layouts both devices share, and the Python
// module stub that lets `import lte_cuda._C` load this library.
#include "lte_basis_host.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/sort.h>
#include <Python.h>
#include <torch/library.h>

namespace lte {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

bool is_low_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// x and grad_x: the features' dtype, or float16/bfloat16 beside float32 features.
bool is_output_dtype_of(at::ScalarType out, at::ScalarType features) {
  return out == features || (features == at::kFloat && is_low_precision(out));
}

void check_basis_inputs(const at::Tensor& coef, const at::Tensor& freq,
                        const at::Tensor& phase_weight, const at::Tensor& coord,
                        const at::Tensor& cell) {
  TORCH_CHECK(coef.dim() == 4, "lte_basis: coef must have shape (B, C, h, w), got ", coef.sizes());
  TORCH_CHECK(freq.sizes() == coef.sizes(),
              "lte_basis: freq must have the shape of coef (B, C, h, w) = ", coef.sizes(), ", got ",
              freq.sizes());
  const int64_t batch = coef.size(0), channels = coef.size(1);
  TORCH_CHECK(channels > 0 && channels % 2 == 0,
              "lte_basis: the channel count C of coef must be even and positive, got C=", channels);
  TORCH_CHECK(coef.size(2) >= 1 && coef.size(3) >= 1,
              "lte_basis: coef must have h >= 1 and w >= 1, got ", coef.sizes());
  TORCH_CHECK(
      phase_weight.dim() == 2 && phase_weight.size(0) == channels / 2 && phase_weight.size(1) == 2,
      "lte_basis: phase_weight must have shape (C/2, 2) = (", channels / 2, ", 2), got ",
      phase_weight.sizes());
  TORCH_CHECK(coord.dim() == 3 && coord.size(2) == 2,
              "lte_basis: coord must have shape (B, Q, 2), got ", coord.sizes());
  TORCH_CHECK(cell.sizes() == coord.sizes(), "lte_basis: cell must have the shape of coord ",
              coord.sizes(), ", got ", cell.sizes());
  TORCH_CHECK(coord.size(0) == batch, "lte_basis: coord has batch size ", coord.size(0),
              " but coef has batch size ", batch);

  TORCH_CHECK(is_supported_float(coef.scalar_type()),
              "lte_basis: coef must be float16, bfloat16, float32 or float64, got ",
              coef.scalar_type());
  TORCH_CHECK(
      freq.scalar_type() == coef.scalar_type() && phase_weight.scalar_type() == coef.scalar_type(),
      "lte_basis: coef, freq and phase_weight must have one dtype, got coef ", coef.scalar_type(),
      ", freq ", freq.scalar_type(), ", phase_weight ", phase_weight.scalar_type());
  TORCH_CHECK(coord.scalar_type() == cell.scalar_type(),
              "lte_basis: coord and cell must have one dtype, got coord ", coord.scalar_type(),
              ", cell ", cell.scalar_type());
  // Low-precision features may come with float32 coordinates (what autocast passes): the
  // nearest-pixel choice needs more than 8 or 11 bits of coordinate.
  const bool low_precision = is_low_precision(coef.scalar_type());
  TORCH_CHECK(coord.scalar_type() == coef.scalar_type() ||
                  (low_precision && coord.scalar_type() == at::kFloat),
              "lte_basis: coord and cell must have the dtype of coef (", coef.scalar_type(),
              ") or float32 when coef is float16/bfloat16, got ", coord.scalar_type());

  const at::Device device = coef.device();
  TORCH_CHECK(freq.device() == device && phase_weight.device() == device &&
                  coord.device() == device && cell.device() == device,
              "lte_basis: all tensors must be on one device, got coef ", device, ", freq ",
              freq.device(), ", phase_weight ", phase_weight.device(), ", coord ", coord.device(),
              ", cell ", cell.device());
}

void check_grad_x(const at::Tensor& grad_x, const at::Tensor& coef, const at::Tensor& coord) {
  const bool shape_ok = grad_x.dim() == 4 && grad_x.size(0) == coef.size(0) &&
                        grad_x.size(1) == coord.size(1) && grad_x.size(2) == 4 &&
                        grad_x.size(3) == coef.size(1);
  TORCH_CHECK(shape_ok, "lte_basis_backward: grad_x must have shape (B, Q, 4, C) = (", coef.size(0),
              ", ", coord.size(1), ", 4, ", coef.size(1), "), got ", grad_x.sizes());
  TORCH_CHECK(is_output_dtype_of(grad_x.scalar_type(), coef.scalar_type()),
              "lte_basis_backward: grad_x must have the dtype of coef (", coef.scalar_type(),
              ") or float16/bfloat16 when coef is float32, got ", grad_x.scalar_type());
  TORCH_CHECK(grad_x.device() == coef.device(),
              "lte_basis_backward: grad_x must be on the device of coef (", coef.device(),
              "), got ", grad_x.device());
}

}  // namespace

BasisShape checked_shape(const at::Tensor& coef, const at::Tensor& freq,
                         const at::Tensor& phase_weight, const at::Tensor& coord,
                         const at::Tensor& cell) {
  check_basis_inputs(coef, freq, phase_weight, coord, cell);
  return {coef.size(0), coef.size(1), coef.size(2), coef.size(3), coord.size(1)};
}

BasisShape checked_backward_shape(const at::Tensor& grad_x, const at::Tensor& coef,
                                  const at::Tensor& freq, const at::Tensor& phase_weight,
                                  const at::Tensor& coord, const at::Tensor& cell) {
  const BasisShape shape = checked_shape(coef, freq, phase_weight, coord, cell);
  check_grad_x(grad_x, coef, coord);
  return shape;
}

at::ScalarType compute_type(const at::Tensor& coef) {
  return coef.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::ScalarType checked_out_dtype(const at::Tensor& coef, std::optional<at::ScalarType> out_dtype) {
  const at::ScalarType out = out_dtype.value_or(coef.scalar_type());
  TORCH_CHECK(is_output_dtype_of(out, coef.scalar_type()),
              "lte_basis: out_dtype must be the dtype of coef (", coef.scalar_type(),
              ") or float16/bfloat16 when coef is float32, got ", out);
  return out;
}

PixelGroups group_by_pixel(const at::Tensor& keys, int64_t total_pixels) {
  const auto [sorted_keys, order] =
      at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor pixels = at::arange(total_pixels + 1, keys.options());
  return {order, at::searchsorted(sorted_keys, pixels)};
}

KernelInputs kernel_inputs(const at::Tensor& coef, const at::Tensor& freq,
                           const at::Tensor& phase_weight, const at::Tensor& coord,
                           const at::Tensor& cell) {
  const at::ScalarType compute = compute_type(coef);
  return {coef.permute({0, 2, 3, 1}).to(compute).contiguous(),
          freq.permute({0, 2, 3, 1}).to(compute).contiguous(),
          phase_weight.t().to(compute).contiguous(), coord.to(compute).contiguous(),
          cell.to(compute).contiguous()};
}

at::Tensor from_channels_last(const at::Tensor& grad_cl, at::ScalarType dtype) {
  return grad_cl.to(dtype).permute({0, 3, 1, 2});
}

}  // namespace lte

TORCH_LIBRARY(lte_cuda, m) {
  m.def(
      "lte_basis(Tensor coef, Tensor freq, Tensor phase_weight, Tensor coord, Tensor cell, "
      "ScalarType? out_dtype=None) -> (Tensor, Tensor)");
  m.def(
      "lte_basis_backward(Tensor grad_x, Tensor coef, Tensor freq, Tensor phase_weight, "
      "Tensor coord, Tensor cell, bool sync_free=False) -> (Tensor, Tensor, Tensor)");
}

// `import lte_cuda._C` loads this library, whose static initialisers register the ops; the
// module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
