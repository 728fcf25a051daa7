// Fused bias + activation + gain + clamp, and its first and second derivatives, elementwise.
//
// For s = x + b[channel] and h(s) = act(s) * gain:
//   order 0: y = clamp(h(s), -clamp, clamp)
//   order 1: y = g * h'(s)     order 2: y = g * h''(s)     (both zero where |h(s)| >= clamp)
// Arithmetic runs in float (double for double tensors) whatever the storage type.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

namespace {

template <typename T>
__device__ __forceinline__ T sigmoid_of(T s) {
    return T(1) / (T(1) + exp(-s));
}

// The order-th derivative (0, 1 or 2) of activation `act` at s; ids as in bias_act.py.
template <typename T>
__device__ __forceinline__ T activation(int act, int order, T s, T alpha) {
    const T selu_scale = T(1.0507009873554805);
    const T selu_alpha = T(1.6732632423543772);
    switch (act) {
        case 0:  // linear
            return order == 0 ? s : (order == 1 ? T(1) : T(0));
        case 1:  // relu
            return order == 0 ? (s > T(0) ? s : T(0)) : (order == 1 ? T(s > T(0)) : T(0));
        case 2:  // lrelu
            return order == 0 ? (s > T(0) ? s : s * alpha) : (order == 1 ? (s > T(0) ? T(1) : alpha) : T(0));
        case 3: {  // tanh
            const T t = tanh(s);
            return order == 0 ? t : (order == 1 ? T(1) - t * t : T(-2) * t * (T(1) - t * t));
        }
        case 4: {  // sigmoid
            const T p = sigmoid_of(s);
            return order == 0 ? p : (order == 1 ? p * (T(1) - p) : p * (T(1) - p) * (T(1) - T(2) * p));
        }
        // elu and selu at s = 0 follow torch: the first derivative takes the negative branch, the second
        // the positive one, so both paths agree even where x + b rounds to exactly 0 (common in float16).
        case 5:  // elu
            if (order == 2) return s >= T(0) ? T(0) : exp(s);
            if (s > T(0)) return order == 0 ? s : T(1);
            return order == 0 ? expm1(s) : exp(s);
        case 6:  // selu
            if (order == 2) return s >= T(0) ? T(0) : selu_scale * selu_alpha * exp(s);
            if (s > T(0)) return order == 0 ? selu_scale * s : selu_scale;
            return order == 0 ? selu_scale * selu_alpha * expm1(s) : selu_scale * selu_alpha * exp(s);
        case 7: {  // softplus (threshold 20, as torch)
            if (order == 0) return s > T(20) ? s : log1p(exp(s));
            const T p = sigmoid_of(s);
            return order == 1 ? p : p * (T(1) - p);
        }
        case 8: {  // swish
            const T p = sigmoid_of(s);
            if (order == 0) return s * p;
            if (order == 1) return p * (T(1) + s * (T(1) - p));
            return p * (T(1) - p) * (T(2) + s * (T(1) - T(2) * p));
        }
    }
    return T(0);
}

template <typename scalar_t>
__global__ void bias_act_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ b,
                                const scalar_t* __restrict__ g, scalar_t* __restrict__ y, int64_t n,
                                int64_t inner, int64_t channels, int act, int order,
                                at::opmath_type<scalar_t> alpha, at::opmath_type<scalar_t> gain,
                                at::opmath_type<scalar_t> clamp) {
    using T = at::opmath_type<scalar_t>;
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        T s = static_cast<T>(x[i]);
        if (b != nullptr) s += static_cast<T>(b[(i / inner) % channels]);
        T out = activation<T>(act, order, s, alpha) * gain;
        if (order == 0) {
            if (clamp >= T(0)) out = out > clamp ? clamp : (out < -clamp ? -clamp : out);
        } else {
            // As torch.clamp: no gradient where the value was clamped or sits exactly on the bound.
            if (clamp >= T(0) && !(fabs(activation<T>(act, 0, s, alpha) * gain) < clamp)) out = T(0);
            out *= static_cast<T>(g[i]);
        }
        y[i] = static_cast<scalar_t>(out);
    }
}

}  // namespace

at::Tensor bias_act_cuda(const at::Tensor& x, const at::Tensor& b, const at::Tensor& g,
                         int64_t dim, int64_t act, int64_t order, double alpha, double gain, double clamp) {
    auto y = at::empty_like(x);
    const int64_t n = x.numel();
    if (n == 0) return y;
    int64_t inner = 1;
    for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= x.size(d);
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20);
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
                                    "bias_act_cuda", [&] {
        using T = at::opmath_type<scalar_t>;
        bias_act_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
            x.data_ptr<scalar_t>(), b.numel() > 0 ? b.data_ptr<scalar_t>() : nullptr,
            order > 0 ? g.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(), n, inner, x.size(dim),
            int(act), int(order), T(alpha), T(gain), T(clamp));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return y;
}
