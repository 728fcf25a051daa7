// Python binding of the fused bias + activation kernel: argument checks here, arithmetic in bias_act.cu.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>

torch::Tensor bias_act_cuda(const torch::Tensor& x, const torch::Tensor& b, const torch::Tensor& g,
                            int64_t dim, int64_t act, int64_t order, double alpha, double gain, double clamp);

namespace {

constexpr int64_t kNumActivations = 9;  // keep in step with ACTIVATIONS in bias_act.py

torch::Tensor bias_act(const torch::Tensor& x, const torch::Tensor& b, const torch::Tensor& g, int64_t dim,
                       int64_t act, int64_t order, double alpha, double gain, double clamp) {
    TORCH_CHECK(x.is_cuda(), "bias_act: x must be a CUDA tensor");
    TORCH_CHECK(x.is_contiguous(), "bias_act: x must be contiguous");
    TORCH_CHECK(x.dim() >= 1, "bias_act: x must have at least one dimension");
    TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim out of range");
    TORCH_CHECK(act >= 0 && act < kNumActivations, "bias_act: unknown activation id ", act);
    TORCH_CHECK(order >= 0 && order <= 2, "bias_act: order must be 0, 1 or 2");
    if (b.numel() > 0) {
        TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type(),
                    "bias_act: b must match x in device and dtype");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim) && b.is_contiguous(),
                    "bias_act: b must be a contiguous vector of x.size(dim) elements");
    }
    if (order > 0) {
        TORCH_CHECK(g.device() == x.device() && g.scalar_type() == x.scalar_type() && g.is_contiguous(),
                    "bias_act: g must be contiguous and match x in device and dtype");
        TORCH_CHECK(g.sizes() == x.sizes(), "bias_act: g must have the shape of x");
    }
    const at::cuda::OptionalCUDAGuard guard(x.device());
    return bias_act_cuda(x, b, g, dim, act, order, alpha, gain, clamp);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act,
          "order 0: clamp(act(x + b) * gain); order 1: g * d/ds; order 2: g * d2/ds2 (zero where clamped)",
          py::arg("x"), py::arg("b"), py::arg("g"), py::arg("dim"), py::arg("act"), py::arg("order"),
          py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
}
