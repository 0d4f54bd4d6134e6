// Depthwise 2-D convolution (one K x K filter per channel, no bias, padding K / 2)
// for float32 NCHW tensors on the CPU, forward and exact backward, as a Paddle
// custom operator. Kernel sizes 3, 5 and 7; strides 1 and 2.
//
// Paddle's CPU kernel spends about 1.2 us per (image, channel) pair whatever the
// spatial size, and depthwise convolutions took 78% of a MobileNet training step.
//
// How this one is fast: each (image, channel) plane is first copied into a
// zero-padded "tap layout", in which every tap of the filter reads one contiguous
// run. For stride 1 that is the padded plane; for stride 2 its four phases (even
// and odd rows times even and odd columns), where output (y, x) reads tap (ky, kx)
// in phase (ky % 2, kx % 2) at (y + ky / 2, x + kx / 2). A layout with row length L
// is then treated as one flat array: output (y, x) is computed at flat position
// y * L + x, and every tap reads at a constant offset from there, so each
// computation is one long loop over the plane, eight outputs at a time with their
// sums kept in registers across all taps (positions past a row's last output are
// computed and dropped). Row-by-row loops over the few columns of late MobileNet
// layers spent their time in loop overhead instead.
//
// The backward pass uses the same loops: the weight gradient is a dot product of
// the output gradient with each tap's run, and the input gradient is, phase by
// phase, a correlation of the zero-padded output gradient with the flipped taps.
//
// Single-threaded: the tool trains one fold process per core.
#include <algorithm>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

namespace {

// Eight floats, one AVX register (two NEON ones), through GCC's and Clang's vector
// extensions, which the auto-vectoriser did not manage to keep in registers.
typedef float Lanes __attribute__((vector_size(32)));
constexpr int kLanes = 8;

inline Lanes LoadLanes(const float* src) {
  Lanes v;
  std::memcpy(&v, src, sizeof(v));
  return v;
}

inline void StoreLanes(float* dst, Lanes v) { std::memcpy(dst, &v, sizeof(v)); }

// out[j] = sum over t < taps of weight[t] * src[t][j], for j < count.
void CorrelateFlat(const float* const* src, const float* weight, int taps, float* out, int64_t count) {
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    Lanes acc = {};
    for (int t = 0; t < taps; ++t) acc += weight[t] * LoadLanes(src[t] + j);
    StoreLanes(out + j, acc);
  }
  for (; j < count; ++j) {
    float acc = 0.0f;
    for (int t = 0; t < taps; ++t) acc += weight[t] * src[t][j];
    out[j] = acc;
  }
}

// acc[t] += grad[j] * src[t][j] over the first count - count % 8 positions, lane by lane
// (kept across a channel's images, so that a small plane does not pay for adding up the
// lanes); the last count % 8 go straight into sums[t], in double.
template <int Taps>
void DotFlat(const float* grad, const float* const* src, int64_t count, Lanes* acc, double* sums) {
  int64_t j = 0;
  for (; j + kLanes <= count; j += kLanes) {
    const Lanes g = LoadLanes(grad + j);
    for (int t = 0; t < Taps; ++t) acc[t] += g * LoadLanes(src[t] + j);
  }
  for (int t = 0; t < Taps; ++t) {
    for (int64_t i = j; i < count; ++i) sums[t] += grad[i] * src[t][i];
  }
}

struct Geometry {
  int64_t n, c, h, w;  // input
  int64_t out_h, out_w;
  int64_t padding;
  Geometry(const std::vector<int64_t>& shape, int kernel, int stride)
      : n(shape[0]), c(shape[1]), h(shape[2]), w(shape[3]), padding(kernel / 2) {
    out_h = (h + 2 * padding - kernel) / stride + 1;
    out_w = (w + 2 * padding - kernel) / stride + 1;
  }
};

// A plane, zero-padded, split into S x S phases of `rows` x `row_len` (see the top
// of the file), with one spare row so that the flat loops' dropped positions stay inside.
template <int K, int S>
struct TapLayout {
  int64_t rows, row_len, phase_size;
  std::vector<float> data;

  explicit TapLayout(const Geometry& g)
      : rows((g.h + 2 * g.padding + S - 1) / S),
        row_len((g.w + 2 * g.padding + S - 1) / S),
        phase_size((rows + 1) * row_len),
        data(S * S * phase_size) {}

  float* Phase(int a, int b) { return data.data() + (a * S + b) * phase_size; }
  // Where tap (ky, kx) reads for output (0, 0).
  const float* Tap(int ky, int kx) { return Phase(ky % S, kx % S) + (ky / S) * row_len + kx / S; }

  // Padded position (py, px) of the plane.
  float& At(int64_t py, int64_t px) { return Phase(py % S, px % S)[(py / S) * row_len + px / S]; }

  void Fill(const float* plane, const Geometry& g) {
    std::fill(data.begin(), data.end(), 0.0f);
    for (int64_t y = 0; y < g.h; ++y) {
      if (S == 1) {
        std::memcpy(&At(y + g.padding, g.padding), plane + y * g.w, sizeof(float) * g.w);
      } else {
        for (int64_t x = 0; x < g.w; ++x) At(y + g.padding, x + g.padding) = plane[y * g.w + x];
      }
    }
  }

  void Unfill(float* plane, const Geometry& g) {
    for (int64_t y = 0; y < g.h; ++y) {
      if (S == 1) {
        std::memcpy(plane + y * g.w, &At(y + g.padding, g.padding), sizeof(float) * g.w);
      } else {
        for (int64_t x = 0; x < g.w; ++x) plane[y * g.w + x] = At(y + g.padding, x + g.padding);
      }
    }
  }
};

// The output gradient of a plane at the layout's row length, shifted by kMargin rows
// and columns of zeros, so that the input gradient's flipped taps read inside it.
template <int K, int S>
struct PaddedGrad {
  static constexpr int kMargin = (K - 1) / S;
  int64_t row_len;
  std::vector<float> data;

  PaddedGrad(const Geometry& g, int64_t layout_row_len)
      : row_len(layout_row_len), data((g.out_h + 2 * kMargin + 2) * layout_row_len) {}

  // The gradient itself: row length row_len, zeros past each row's last output.
  const float* Interior() const { return data.data() + kMargin * row_len + kMargin; }

  void Fill(const float* grad, const Geometry& g) {
    std::fill(data.begin(), data.end(), 0.0f);
    for (int64_t y = 0; y < g.out_h; ++y)
      std::memcpy(data.data() + (y + kMargin) * row_len + kMargin, grad + y * g.out_w, sizeof(float) * g.out_w);
  }
};

template <int K, int S>
void Forward(const float* x, const float* w, float* out, const Geometry& g) {
  TapLayout<K, S> layout(g);
  std::vector<float> flat(g.out_h * layout.row_len);
  const float* src[K * K];
  for (int64_t n = 0; n < g.n; ++n) {
    for (int64_t c = 0; c < g.c; ++c) {
      const int64_t plane = n * g.c + c;
      layout.Fill(x + plane * g.h * g.w, g);
      for (int t = 0; t < K * K; ++t) src[t] = layout.Tap(t / K, t % K);
      CorrelateFlat(src, w + c * K * K, K * K, flat.data(), g.out_h * layout.row_len);
      float* o = out + plane * g.out_h * g.out_w;
      for (int64_t y = 0; y < g.out_h; ++y)
        std::memcpy(o + y * g.out_w, flat.data() + y * layout.row_len, sizeof(float) * g.out_w);
    }
  }
}

template <int K, int S>
void Backward(const float* x, const float* w, const float* grad_out, float* grad_x, float* grad_w,
              const Geometry& g) {
  TapLayout<K, S> layout(g), grad_layout(g);
  PaddedGrad<K, S> grad(g, layout.row_len);
  constexpr int kMargin = PaddedGrad<K, S>::kMargin;
  std::vector<double> sums(g.c * K * K, 0.0);
  const float* src[K * K];
  for (int64_t c = 0; c < g.c; ++c) {
    const float* wc = w + c * K * K;
    Lanes acc[K * K] = {};
    for (int64_t n = 0; n < g.n; ++n) {
      const int64_t plane = n * g.c + c;
      layout.Fill(x + plane * g.h * g.w, g);
      grad.Fill(grad_out + plane * g.out_h * g.out_w, g);

      for (int t = 0; t < K * K; ++t) src[t] = layout.Tap(t / K, t % K);
      DotFlat<K * K>(grad.Interior(), src, g.out_h * layout.row_len, acc, sums.data() + c * K * K);

      // Phase (a, b) at (i, j) gathers grad * weight from the outputs whose taps read it:
      // output (i - ky / S, j - kx / S) for every tap (ky, kx) in that phase.
      for (int a = 0; a < S; ++a) {
        for (int b = 0; b < S; ++b) {
          float weight[K * K];
          int taps = 0;
          for (int ky = a; ky < K; ky += S) {
            for (int kx = b; kx < K; kx += S) {
              src[taps] = grad.data.data() + (kMargin - ky / S) * grad.row_len + kMargin - kx / S;
              weight[taps++] = wc[ky * K + kx];
            }
          }
          CorrelateFlat(src, weight, taps, grad_layout.Phase(a, b), grad_layout.rows * grad_layout.row_len);
        }
      }
      grad_layout.Unfill(grad_x + plane * g.h * g.w, g);
    }
    for (int t = 0; t < K * K; ++t) {
      for (int l = 0; l < kLanes; ++l) sums[c * K * K + t] += acc[t][l];
    }
  }
  for (int64_t i = 0; i < g.c * K * K; ++i) grad_w[i] = static_cast<float>(sums[i]);
}

struct Kernels {
  void (*forward)(const float*, const float*, float*, const Geometry&);
  void (*backward)(const float*, const float*, const float*, float*, float*, const Geometry&);
};

template <int K, int S>
Kernels KernelsFor() {
  return {&Forward<K, S>, &Backward<K, S>};
}

Kernels SelectKernels(int kernel, int stride) {
  if (kernel == 3 && stride == 1) return KernelsFor<3, 1>();
  if (kernel == 3 && stride == 2) return KernelsFor<3, 2>();
  if (kernel == 5 && stride == 1) return KernelsFor<5, 1>();
  if (kernel == 5 && stride == 2) return KernelsFor<5, 2>();
  if (kernel == 7 && stride == 1) return KernelsFor<7, 1>();
  if (kernel == 7 && stride == 2) return KernelsFor<7, 2>();
  PD_THROW("fast_depthwise_conv2d: kernel ", kernel, " with stride ", stride, " is not supported");
}

void CheckInputs(const paddle::Tensor& x, const paddle::Tensor& w) {
  PD_CHECK(x.is_cpu() && w.is_cpu(), "fast_depthwise_conv2d runs on the CPU only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && w.dtype() == paddle::DataType::FLOAT32,
           "fast_depthwise_conv2d takes float32 tensors");
  PD_CHECK(x.shape().size() == 4 && w.shape().size() == 4, "fast_depthwise_conv2d takes NCHW tensors");
  PD_CHECK(w.shape()[0] == x.shape()[1] && w.shape()[1] == 1 && w.shape()[2] == w.shape()[3],
           "fast_depthwise_conv2d needs square [C, 1, K, K] weights for C input channels");
}

}  // namespace

std::vector<paddle::Tensor> DepthwiseForward(const paddle::Tensor& x, const paddle::Tensor& w, int stride) {
  CheckInputs(x, w);
  const int kernel = static_cast<int>(w.shape()[2]);
  const Kernels kernels = SelectKernels(kernel, stride);
  const Geometry g(x.shape(), kernel, stride);
  auto out = paddle::empty({g.n, g.c, g.out_h, g.out_w}, paddle::DataType::FLOAT32, x.place());
  kernels.forward(x.data<float>(), w.data<float>(), out.data<float>(), g);
  return {out};
}

std::vector<paddle::Tensor> DepthwiseBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                              const paddle::Tensor& grad_out, int stride) {
  CheckInputs(x, w);
  const int kernel = static_cast<int>(w.shape()[2]);
  const Kernels kernels = SelectKernels(kernel, stride);
  const Geometry g(x.shape(), kernel, stride);
  auto grad_x = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  auto grad_w = paddle::empty(w.shape(), paddle::DataType::FLOAT32, w.place());
  kernels.backward(x.data<float>(), w.data<float>(), grad_out.data<float>(), grad_x.data<float>(),
                   grad_w.data<float>(), g);
  return {grad_x, grad_w};
}

std::vector<std::vector<int64_t>> DepthwiseInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                      int stride) {
  const Geometry g(x, static_cast<int>(w[2]), stride);
  return {{g.n, g.c, g.out_h, g.out_w}};
}

std::vector<paddle::DataType> DepthwiseInferDtype(const paddle::DataType& x, const paddle::DataType& w) {
  return {x};
}

PD_BUILD_OP(fast_depthwise_conv2d)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"stride: int"})
    .SetKernelFn(PD_KERNEL(DepthwiseForward))
    .SetInferShapeFn(PD_INFER_SHAPE(DepthwiseInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(DepthwiseInferDtype));

PD_BUILD_GRAD_OP(fast_depthwise_conv2d)
    .Inputs({"X", "W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W")})
    .Attrs({"stride: int"})
    .SetKernelFn(PD_KERNEL(DepthwiseBackward));
