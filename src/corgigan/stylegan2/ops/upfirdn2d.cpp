// Python binding of the upfirdn2d kernel: argument checks here, arithmetic in upfirdn2d.cu.

#include <torch/extension.h>
#include <c10/cuda/CUDAGuard.h>

torch::Tensor upfirdn2d_cuda(const torch::Tensor& x, const torch::Tensor& f, int upx, int upy, int downx,
                             int downy, int padx0, int padx1, int pady0, int pady1, bool flip, double gain);

namespace {

torch::Tensor upfirdn2d(const torch::Tensor& x, const torch::Tensor& f, int64_t upx, int64_t upy,
                        int64_t downx, int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0,
                        int64_t pady1, bool flip, double gain) {
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor");
    TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "upfirdn2d: x must be a contiguous [N, C, H, W] tensor");
    TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f must be on the device of x");
    TORCH_CHECK(f.dim() == 2 && f.numel() > 0 && f.is_contiguous(), "upfirdn2d: f must be a contiguous 2-D filter");
    const auto want = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK(f.scalar_type() == want, "upfirdn2d: f must be float32 (float64 when x is float64)");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be >= 1");
    const int64_t limit = int64_t(1) << 30;  // keeps every coordinate inside int arithmetic in the kernel
    TORCH_CHECK(x.size(2) * upy + std::abs(pady0) + std::abs(pady1) < limit &&
                x.size(3) * upx + std::abs(padx0) + std::abs(padx1) < limit, "upfirdn2d: image too large");
    const int64_t out_h = (x.size(2) * upy + pady0 + pady1 - f.size(0)) / downy + 1;
    const int64_t out_w = (x.size(3) * upx + padx0 + padx1 - f.size(1)) / downx + 1;
    TORCH_CHECK(x.size(2) * upy + pady0 + pady1 >= f.size(0) && x.size(3) * upx + padx0 + padx1 >= f.size(1)
                && out_h >= 1 && out_w >= 1, "upfirdn2d: the output would be empty");
    const at::cuda::OptionalCUDAGuard guard(x.device());
    return upfirdn2d_cuda(x, f, int(upx), int(upy), int(downx), int(downy), int(padx0), int(padx1), int(pady0),
                          int(pady1), flip, gain);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d, "zero-insertion upsample, pad (negative crops), FIR filter, downsample",
          py::arg("x"), py::arg("f"), py::arg("upx"), py::arg("upy"), py::arg("downx"), py::arg("downy"),
          py::arg("padx0"), py::arg("padx1"), py::arg("pady0"), py::arg("pady1"), py::arg("flip"),
          py::arg("gain"));
}
