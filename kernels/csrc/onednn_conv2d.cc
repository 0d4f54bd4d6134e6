// Plain 2-D convolutions (one group, no dilation, no bias) for float32 CPU tensors,
// forward and exact backward, through oneDNN: the library PyTorch's CPU convolutions
// use, and which Paddle's wheel ships (paddle/libs/libdnnl.so.3) without calling it for
// convolutions in its dynamic graph. Paddle's own kernel (im2col, then a matrix product
// per image) took 56 ms forward and backward for ResNet18's 64->64 3x3 convolution at
// 24x24 (batch 32, one thread), oneDNN 30 ms (docs/speed-on-cpu.md).
//
//   onednn_conv2d(x, w; stride, padding): grad_x and grad_w
//   onednn_conv2d_fixed_input(x, w; stride, padding): grad_w only, for a model's
//     first layer, whose input needs no gradient
//
// oneDNN computes in its own blocked layouts: tensors are reordered to them and back
// around each primitive, as PyTorch does for NCHW tensors. The primitives of each shape
// are created once per process and kept.
//
// The wheel ships oneDNN's library but not its C headers, so the few declarations this
// file needs are below, copied from oneDNN 3.6's dnnl.h and dnnl_types.h (Apache-2.0);
// its C interface keeps these stable across 3.x, and the major version is checked.
#include <algorithm>
#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "paddle/extension.h"

extern "C" {
typedef struct dnnl_engine* dnnl_engine_t;
typedef struct dnnl_stream* dnnl_stream_t;
typedef struct dnnl_memory_desc* dnnl_memory_desc_t;
typedef const struct dnnl_memory_desc* const_dnnl_memory_desc_t;
typedef struct dnnl_memory* dnnl_memory_t;
typedef struct dnnl_primitive_desc* dnnl_primitive_desc_t;
typedef const struct dnnl_primitive_desc* const_dnnl_primitive_desc_t;
typedef struct dnnl_primitive* dnnl_primitive_t;
typedef const struct dnnl_primitive* const_dnnl_primitive_t;
typedef const struct dnnl_primitive_attr* const_dnnl_primitive_attr_t;
typedef int64_t dnnl_dims_t[12];
typedef struct {
  int arg;
  dnnl_memory_t memory;
} dnnl_exec_arg_t;
typedef struct {
  int major, minor, patch;
  const char* hash;
  unsigned cpu_runtime, gpu_runtime;
} dnnl_version_t;

int dnnl_engine_create(dnnl_engine_t* engine, int kind, size_t index);
int dnnl_stream_create(dnnl_stream_t* stream, dnnl_engine_t engine, unsigned flags);
int dnnl_stream_wait(dnnl_stream_t stream);
int dnnl_memory_desc_create_with_tag(dnnl_memory_desc_t* desc, int ndims, const dnnl_dims_t dims, int data_type,
                                     int tag);
int dnnl_memory_desc_destroy(dnnl_memory_desc_t desc);
int dnnl_memory_desc_equal(const_dnnl_memory_desc_t lhs, const_dnnl_memory_desc_t rhs);
int dnnl_memory_create(dnnl_memory_t* memory, const_dnnl_memory_desc_t desc, dnnl_engine_t engine, void* handle);
int dnnl_memory_set_data_handle(dnnl_memory_t memory, void* handle);
int dnnl_convolution_forward_primitive_desc_create(
    dnnl_primitive_desc_t* pd, dnnl_engine_t engine, int prop_kind, int alg_kind, const_dnnl_memory_desc_t src,
    const_dnnl_memory_desc_t weights, const_dnnl_memory_desc_t bias, const_dnnl_memory_desc_t dst,
    const dnnl_dims_t strides, const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_attr_t attr);
int dnnl_convolution_backward_data_primitive_desc_create(
    dnnl_primitive_desc_t* pd, dnnl_engine_t engine, int alg_kind, const_dnnl_memory_desc_t diff_src,
    const_dnnl_memory_desc_t weights, const_dnnl_memory_desc_t diff_dst, const dnnl_dims_t strides,
    const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_desc_t hint_fwd_pd, const_dnnl_primitive_attr_t attr);
int dnnl_convolution_backward_weights_primitive_desc_create(
    dnnl_primitive_desc_t* pd, dnnl_engine_t engine, int alg_kind, const_dnnl_memory_desc_t src,
    const_dnnl_memory_desc_t diff_weights, const_dnnl_memory_desc_t diff_bias, const_dnnl_memory_desc_t diff_dst,
    const dnnl_dims_t strides, const dnnl_dims_t dilates, const dnnl_dims_t padding_l, const dnnl_dims_t padding_r,
    const_dnnl_primitive_desc_t hint_fwd_pd, const_dnnl_primitive_attr_t attr);
int dnnl_reorder_primitive_desc_create(dnnl_primitive_desc_t* pd, const_dnnl_memory_desc_t src,
                                       dnnl_engine_t src_engine, const_dnnl_memory_desc_t dst,
                                       dnnl_engine_t dst_engine, const_dnnl_primitive_attr_t attr);
const_dnnl_memory_desc_t dnnl_primitive_desc_query_md(const_dnnl_primitive_desc_t pd, int what, int index);
int dnnl_primitive_desc_destroy(dnnl_primitive_desc_t pd);
int dnnl_primitive_create(dnnl_primitive_t* primitive, const_dnnl_primitive_desc_t pd);
int dnnl_primitive_execute(const_dnnl_primitive_t primitive, dnnl_stream_t stream, int nargs,
                           const dnnl_exec_arg_t* args);
const dnnl_version_t* dnnl_version(void);
}

namespace {

// Values from oneDNN 3.6's headers.
constexpr int kCpu = 1, kF32 = 3, kAnyLayout = 1, kPlainLayout = 5 /* nchw, oihw */;
constexpr int kForwardTraining = 64, kConvolutionDirect = 1;
constexpr int kQuerySrc = 129, kQueryDiffSrc = 130, kQueryWeights = 131, kQueryDiffWeights = 132,
              kQueryDst = 133, kQueryDiffDst = 134;
constexpr int kArgSrc = 1, kArgDst = 17, kArgWeights = 33, kArgDiffSrc = 129, kArgDiffDst = 145,
              kArgDiffWeights = 161;
void* const kAllocate = reinterpret_cast<void*>(static_cast<size_t>(-1));

void Check(int status, const char* what) { PD_CHECK(status == 0, "oneDNN: ", what, " failed (status ", status, ")"); }

struct Runtime {
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  Runtime() {
    const dnnl_version_t* version = dnnl_version();
    PD_CHECK(version->major == 3, "oneDNN 3.x expected, found ", version->major, ".", version->minor);
    Check(dnnl_engine_create(&engine, kCpu, 0), "creating the CPU engine");
    Check(dnnl_stream_create(&stream, engine, 0), "creating a stream");
  }
};

Runtime& GetRuntime() {
  static Runtime runtime;
  return runtime;
}

// A float32 tensor's description in a layout (kPlainLayout, or kAnyLayout: the primitive's
// choice), released when it goes out of scope (oneDNN copies what it keeps).
class Desc {
 public:
  Desc(const std::vector<int64_t>& shape, int layout) {
    dnnl_dims_t dims = {};
    std::copy(shape.begin(), shape.end(), dims);
    Check(dnnl_memory_desc_create_with_tag(&desc_, static_cast<int>(shape.size()), dims, kF32, layout),
          "describing a tensor");
  }
  ~Desc() { dnnl_memory_desc_destroy(desc_); }
  Desc(const Desc&) = delete;
  Desc& operator=(const Desc&) = delete;
  operator const_dnnl_memory_desc_t() const { return desc_; }

 private:
  dnnl_memory_desc_t desc_ = nullptr;
};

dnnl_primitive_t MakePrimitive(dnnl_primitive_desc_t pd) {
  dnnl_primitive_t primitive;
  Check(dnnl_primitive_create(&primitive, pd), "creating a primitive");
  return primitive;
}

// One argument of a primitive: the caller's plain (NCHW) tensor, and where the primitive
// wants another layout, a buffer of its own with the reorder between the two.
class Operand {
 public:
  Operand(const std::vector<int64_t>& shape, const_dnnl_memory_desc_t wanted, bool is_input) {
    Runtime& rt = GetRuntime();
    const Desc plain(shape, kPlainLayout);
    Check(dnnl_memory_create(&plain_, plain, rt.engine, nullptr), "wrapping a tensor");
    if (dnnl_memory_desc_equal(plain, wanted)) return;
    Check(dnnl_memory_create(&blocked_, wanted, rt.engine, kAllocate), "allocating a buffer");
    dnnl_primitive_desc_t pd;
    Check(is_input ? dnnl_reorder_primitive_desc_create(&pd, plain, rt.engine, wanted, rt.engine, nullptr)
                   : dnnl_reorder_primitive_desc_create(&pd, wanted, rt.engine, plain, rt.engine, nullptr),
          "planning a reorder");
    reorder_ = MakePrimitive(pd);
    dnnl_primitive_desc_destroy(pd);
  }

  // The memory to hand to the primitive for the tensor at `data`, reordered into it first
  // when the primitive reads it.
  dnnl_memory_t Bind(const float* data, bool read) {
    Check(dnnl_memory_set_data_handle(plain_, const_cast<float*>(data)), "wrapping a tensor");
    if (blocked_ == nullptr) return plain_;
    if (read) Run(reorder_, {{kArgSrc, plain_}, {kArgDst, blocked_}});
    return blocked_;
  }

  // After the primitive wrote into Bind's memory: reorder it back to the plain tensor.
  void Unbind() {
    if (blocked_ != nullptr) Run(reorder_, {{kArgSrc, blocked_}, {kArgDst, plain_}});
  }

  static void Run(dnnl_primitive_t primitive, const std::vector<dnnl_exec_arg_t>& args) {
    Runtime& rt = GetRuntime();
    Check(dnnl_primitive_execute(primitive, rt.stream, static_cast<int>(args.size()), args.data()), "executing");
    Check(dnnl_stream_wait(rt.stream), "waiting for the stream");
  }

 private:
  dnnl_memory_t plain_ = nullptr, blocked_ = nullptr;
  dnnl_primitive_t reorder_ = nullptr;
};

// The three primitives of one convolution shape, and their operands.
struct Convolution {
  dnnl_primitive_t forward, backward_data, backward_weights;
  std::unique_ptr<Operand> fwd_src, fwd_weights, fwd_dst;
  std::unique_ptr<Operand> bwd_diff_dst, bwd_weights, bwd_diff_src;
  std::unique_ptr<Operand> wgt_src, wgt_diff_dst, wgt_diff_weights;

  Convolution(const std::vector<int64_t>& x, const std::vector<int64_t>& w, const std::vector<int64_t>& y,
              int64_t stride, int64_t padding) {
    Runtime& rt = GetRuntime();
    const dnnl_dims_t strides = {stride, stride}, dilates = {0, 0}, pads = {padding, padding};
    const Desc src(x, kAnyLayout), weights(w, kAnyLayout), dst(y, kAnyLayout);
    dnnl_primitive_desc_t fwd, bwd, wgt;
    Check(dnnl_convolution_forward_primitive_desc_create(&fwd, rt.engine, kForwardTraining, kConvolutionDirect, src,
                                                         weights, nullptr, dst, strides, dilates, pads, pads,
                                                         nullptr),
          "planning the forward convolution");
    Check(dnnl_convolution_backward_data_primitive_desc_create(&bwd, rt.engine, kConvolutionDirect, src, weights, dst,
                                                               strides, dilates, pads, pads, fwd, nullptr),
          "planning the input gradient");
    Check(dnnl_convolution_backward_weights_primitive_desc_create(&wgt, rt.engine, kConvolutionDirect, src, weights,
                                                                  nullptr, dst, strides, dilates, pads, pads, fwd,
                                                                  nullptr),
          "planning the weight gradient");
    forward = MakePrimitive(fwd);
    backward_data = MakePrimitive(bwd);
    backward_weights = MakePrimitive(wgt);
    fwd_src = std::make_unique<Operand>(x, dnnl_primitive_desc_query_md(fwd, kQuerySrc, 0), true);
    fwd_weights = std::make_unique<Operand>(w, dnnl_primitive_desc_query_md(fwd, kQueryWeights, 0), true);
    fwd_dst = std::make_unique<Operand>(y, dnnl_primitive_desc_query_md(fwd, kQueryDst, 0), false);
    bwd_diff_dst = std::make_unique<Operand>(y, dnnl_primitive_desc_query_md(bwd, kQueryDiffDst, 0), true);
    bwd_weights = std::make_unique<Operand>(w, dnnl_primitive_desc_query_md(bwd, kQueryWeights, 0), true);
    bwd_diff_src = std::make_unique<Operand>(x, dnnl_primitive_desc_query_md(bwd, kQueryDiffSrc, 0), false);
    wgt_src = std::make_unique<Operand>(x, dnnl_primitive_desc_query_md(wgt, kQuerySrc, 0), true);
    wgt_diff_dst = std::make_unique<Operand>(y, dnnl_primitive_desc_query_md(wgt, kQueryDiffDst, 0), true);
    wgt_diff_weights = std::make_unique<Operand>(w, dnnl_primitive_desc_query_md(wgt, kQueryDiffWeights, 0), false);
    for (dnnl_primitive_desc_t pd : {fwd, bwd, wgt}) dnnl_primitive_desc_destroy(pd);
  }
};

std::vector<int64_t> OutputShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w, int stride,
                                 int padding) {
  return {x[0], w[0], (x[2] + 2 * padding - w[2]) / stride + 1, (x[3] + 2 * padding - w[3]) / stride + 1};
}

// The primitives for this shape, created on first use. Fold workers are processes of their
// own; the lock guards a process that calls from several threads.
std::mutex cache_lock;

Convolution& ConvolutionFor(const paddle::Tensor& x, const paddle::Tensor& w, int stride, int padding) {
  PD_CHECK(x.is_cpu() && w.is_cpu() && x.dtype() == paddle::DataType::FLOAT32 &&
               w.dtype() == paddle::DataType::FLOAT32,
           "onednn_conv2d takes float32 CPU tensors");
  PD_CHECK(x.shape().size() == 4 && w.shape().size() == 4 && w.shape()[1] == x.shape()[1],
           "onednn_conv2d takes x [N, C, H, W] and w [O, C, K, K]");
  static std::map<std::array<int64_t, 10>, std::unique_ptr<Convolution>> cache;
  const auto& xs = x.shape();
  const auto& ws = w.shape();
  const std::array<int64_t, 10> key = {xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], stride, padding, 0};
  auto& entry = cache[key];
  if (!entry) entry = std::make_unique<Convolution>(xs, ws, OutputShape(xs, ws, stride, padding), stride, padding);
  return *entry;
}

paddle::Tensor WeightGradient(Convolution& conv, const paddle::Tensor& x, const paddle::Tensor& w,
                              const paddle::Tensor& grad_out) {
  auto grad_w = paddle::empty(w.shape(), paddle::DataType::FLOAT32, w.place());
  dnnl_memory_t src = conv.wgt_src->Bind(x.data<float>(), true);
  dnnl_memory_t diff_dst = conv.wgt_diff_dst->Bind(grad_out.data<float>(), true);
  dnnl_memory_t diff_weights = conv.wgt_diff_weights->Bind(grad_w.data<float>(), false);
  Operand::Run(conv.backward_weights, {{kArgSrc, src}, {kArgDiffDst, diff_dst}, {kArgDiffWeights, diff_weights}});
  conv.wgt_diff_weights->Unbind();
  return grad_w;
}

}  // namespace

std::vector<paddle::Tensor> ConvForward(const paddle::Tensor& x, const paddle::Tensor& w, int stride, int padding) {
  std::lock_guard<std::mutex> guard(cache_lock);
  Convolution& conv = ConvolutionFor(x, w, stride, padding);
  auto out = paddle::empty(OutputShape(x.shape(), w.shape(), stride, padding), paddle::DataType::FLOAT32, x.place());
  dnnl_memory_t src = conv.fwd_src->Bind(x.data<float>(), true);
  dnnl_memory_t weights = conv.fwd_weights->Bind(w.data<float>(), true);
  dnnl_memory_t dst = conv.fwd_dst->Bind(out.data<float>(), false);
  Operand::Run(conv.forward, {{kArgSrc, src}, {kArgWeights, weights}, {kArgDst, dst}});
  conv.fwd_dst->Unbind();
  return {out};
}

std::vector<paddle::Tensor> ConvBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                         const paddle::Tensor& grad_out, int stride, int padding) {
  std::lock_guard<std::mutex> guard(cache_lock);
  Convolution& conv = ConvolutionFor(x, w, stride, padding);
  auto grad_x = paddle::empty(x.shape(), paddle::DataType::FLOAT32, x.place());
  dnnl_memory_t diff_dst = conv.bwd_diff_dst->Bind(grad_out.data<float>(), true);
  dnnl_memory_t weights = conv.bwd_weights->Bind(w.data<float>(), true);
  dnnl_memory_t diff_src = conv.bwd_diff_src->Bind(grad_x.data<float>(), false);
  Operand::Run(conv.backward_data, {{kArgDiffDst, diff_dst}, {kArgWeights, weights}, {kArgDiffSrc, diff_src}});
  conv.bwd_diff_src->Unbind();
  return {grad_x, WeightGradient(conv, x, w, grad_out)};
}

std::vector<paddle::Tensor> ConvWeightsBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                                const paddle::Tensor& grad_out, int stride, int padding) {
  std::lock_guard<std::mutex> guard(cache_lock);
  return {WeightGradient(ConvolutionFor(x, w, stride, padding), x, w, grad_out)};
}

std::vector<std::vector<int64_t>> ConvInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w,
                                                 int stride, int padding) {
  return {OutputShape(x, w, stride, padding)};
}

std::vector<paddle::DataType> ConvInferDtype(const paddle::DataType& x, const paddle::DataType& w) { return {x}; }

PD_BUILD_OP(onednn_conv2d)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(ConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvInferDtype));

PD_BUILD_GRAD_OP(onednn_conv2d)
    .Inputs({"X", "W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W")})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(ConvBackward));

PD_BUILD_OP(onednn_conv2d_fixed_input)
    .Inputs({"X", "W"})
    .Outputs({"Out"})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(ConvForward))
    .SetInferShapeFn(PD_INFER_SHAPE(ConvInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(ConvInferDtype));

PD_BUILD_GRAD_OP(onednn_conv2d_fixed_input)
    .Inputs({"X", "W", paddle::Grad("Out")})
    .Outputs({paddle::Grad("W")})
    .Attrs({"stride: int", "padding: int"})
    .SetKernelFn(PD_KERNEL(ConvWeightsBackward));
