// upfirdn2d: zero-insertion upsample, pad (negative crops), FIR filter, downsample, per channel.
//
// One thread per output pixel, reading only the taps that land on real (not inserted-zero) input pixels:
// output (oy, ox) sees the padded, upsampled image at rows oy * down + ky, ky in [0, taps), i.e. upsampled
// row u = oy * down + ky - pad0, which holds input row u / up when u is a multiple of up inside the image.
// Without flip the op is a true convolution, so tap ky multiplies f[taps - 1 - ky].

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

namespace {

struct Geometry {
    int in_h, in_w, out_h, out_w, fh, fw, upx, upy, downx, downy, padx0, pady0;
    bool flip;
};

__device__ __forceinline__ int positive_mod(int a, int m) {
    const int r = a % m;
    return r < 0 ? r + m : r;
}

// The taps [first, end) (stepping by up) of one axis that hit input pixels, for window start u0.
__device__ __forceinline__ void tap_range(int u0, int up, int in_size, int taps, int& first, int& end) {
    first = max(positive_mod(-u0, up), -u0);  // both are == -u0 (mod up), so the max is too
    end = min(taps, (in_size - 1) * up - u0 + 1);
}

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const at::opmath_type<scalar_t>* __restrict__ f,
                                 scalar_t* __restrict__ y, int64_t total, Geometry g,
                                 at::opmath_type<scalar_t> gain) {
    using T = at::opmath_type<scalar_t>;
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int ox = int(i % g.out_w);
        const int oy = int((i / g.out_w) % g.out_h);
        const int64_t plane = i / (int64_t(g.out_w) * g.out_h);  // n * C + c
        const scalar_t* src = x + plane * g.in_h * g.in_w;
        const int uy0 = oy * g.downy - g.pady0;
        const int ux0 = ox * g.downx - g.padx0;
        int ky_first, ky_end, kx_first, kx_end;
        tap_range(uy0, g.upy, g.in_h, g.fh, ky_first, ky_end);
        tap_range(ux0, g.upx, g.in_w, g.fw, kx_first, kx_end);
        T acc = T(0);
        for (int ky = ky_first; ky < ky_end; ky += g.upy) {
            const scalar_t* row = src + int64_t((uy0 + ky) / g.upy) * g.in_w;
            const T* frow = f + (g.flip ? ky : g.fh - 1 - ky) * g.fw;
            for (int kx = kx_first; kx < kx_end; kx += g.upx) {
                acc += static_cast<T>(row[(ux0 + kx) / g.upx]) * frow[g.flip ? kx : g.fw - 1 - kx];
            }
        }
        y[i] = static_cast<scalar_t>(acc * gain);
    }
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int upx, int upy, int downx, int downy,
                          int padx0, int padx1, int pady0, int pady1, bool flip, double gain) {
    Geometry g;
    g.in_h = int(x.size(2));
    g.in_w = int(x.size(3));
    g.fh = int(f.size(0));
    g.fw = int(f.size(1));
    g.upx = upx;
    g.upy = upy;
    g.downx = downx;
    g.downy = downy;
    g.padx0 = padx0;
    g.pady0 = pady0;
    g.flip = flip;
    g.out_h = (g.in_h * upy + pady0 + pady1 - g.fh) / downy + 1;
    g.out_w = (g.in_w * upx + padx0 + padx1 - g.fw) / downx + 1;
    auto y = at::empty({x.size(0), x.size(1), g.out_h, g.out_w}, x.options());
    const int64_t total = y.numel();
    if (total == 0) return y;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, int64_t(1) << 20);
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                    "upfirdn2d_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
            x.data_ptr<scalar_t>(), f.data_ptr<T>(), y.data_ptr<scalar_t>(), total, g, T(gain));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return y;
}
