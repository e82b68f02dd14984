// hnnx.SpikeMatMul and hnnx.SpikeConv for onnxruntime: float32 and integer (int8 weights, int8
// or int32 input → int32; an int32 input counts as int8, as a Cast to int8 leaves it).
//
// A constant weight (an initializer) is laid out once, when the session creates the kernel;
// a weight fed at run time is laid out per call. SpikeMatMul gathers the active inputs of every
// row, then runs (column tile × block of rows) work items; SpikeConv runs one work item per
// sample (gather its pixels' active channels, then every output pixel). Both over the intra-op
// thread pool. The numerics are in spike_layers.h.

#pragma once

#include <algorithm>
#include <memory>
#include <thread>
#include <vector>

#include "ort_support.h"
#include "spike_layers.h"

namespace hnnx {

// The label of a spike-input layer's node, whose mode attribute must match the kernel's weight type.
template <typename X>
NodeLabel spike_layer_label(const OrtKernelInfo* info, const char* op) {
  NodeLabel node = label_of(info, op);
  const bool integer = choice_attr(node, info, "mode", "float", {"float", "integer"}) == "integer";
  if (integer != !std::is_same_v<X, float>) {
    node.fail(std::string("a ") + (integer ? "integer" : "float") + "-mode layer needs " +
              (integer ? "int8 weight and int8 or int32 x" : "float x and weight"));
  }
  return node;
}

// The weight input when it is a constant of the session (an initializer), else null.
inline Ort::ConstValue constant_weight(const OrtKernelInfo* info) {
  int is_constant = 0;
  Ort::ConstValue value = Ort::ConstKernelInfo(info).GetTensorConstantInput(1, &is_constant);
  return is_constant ? value : Ort::ConstValue{nullptr};
}

// A bias input [outputs] (or null when absent).
template <typename X>
const spike::Out<X>* bias_of(const NodeLabel& node, const Ort::KernelContext& context, size_t outputs) {
  const Ort::ConstValue bias = optional_input(context, 2);
  if (!bias) return nullptr;
  const std::vector<int64_t> shape = bias.GetTensorTypeAndShapeInfo().GetShape();
  if (shape.size() != 1 || shape[0] != static_cast<int64_t>(outputs)) {
    node.fail("bias must have shape [" + std::to_string(outputs) + "], got " + shape_text(shape));
  }
  return bias.GetTensorData<spike::Out<X>>();
}

// ============================================================================= SpikeMatMul
// X: the weight (and value) type; In: the input's element type.
template <typename X, typename In>
struct DenseRun {
  using A = spike::Acc<X>;
  const spike::DenseLayout<X>* layout;
  const In* x;
  size_t rows, row_block;                 // compute: rows per work item
  size_t step = 1;                        // compute: input blocks per step
  static constexpr size_t kGatherRows = 16;  // gather: rows per work item
  bool every;
  AlignedArray<uint32_t> index;  // [rows, inputs + kChunk]: room for every input of each row
  AlignedArray<uint32_t> start;  // [rows, blocks + 1]: each input block's first event in the row's list
  AlignedArray<A> value;         // [rows, inputs]
  AlignedArray<A> ones;          // [ones_count]: the values of a row of spikes
  size_t ones_count = 0;
  std::vector<spike::EventRow<X>> events;
  std::vector<uint32_t> order;  // rows by descending event count: rows summed together end together
  const spike::Out<X>* bias;
  spike::Out<X>* y;

  size_t row_blocks() const { return (rows + row_block - 1) / row_block; }
  size_t gather_blocks() const { return (rows + kGatherRows - 1) / kGatherRows; }

  void gather(size_t block) {
    const size_t k = layout->inputs;
    for (size_t r = block * kGatherRows; r < std::min(rows, (block + 1) * kGatherRows); ++r) {
      events[r] = spike::gather_row<X>(x + r * k, k, every, layout->block, index.data() + r * (k + spike::kChunk),
                                       start.data() + r * (layout->blocks + 1), value.data() + r * k, ones.data());
    }
  }

  void compute(size_t item) const {
    const size_t t = item % layout->tiles, block = item / layout->tiles;
    const size_t r0 = block * row_block;
    spike::dense_rows<X>(*layout, t, step, events.data(), order.data(), r0, std::min(rows, r0 + row_block), bias, y);
  }

  static void gather_entry(void* self, size_t block) { static_cast<DenseRun*>(self)->gather(block); }
  static void compute_entry(void* self, size_t item) { static_cast<const DenseRun*>(self)->compute(item); }
};

template <typename X, typename In = X>
class SpikeMatMulKernel {
 public:
  explicit SpikeMatMulKernel(const OrtKernelInfo* info) : node_(spike_layer_label<X>(info, "SpikeMatMul")) {
    if (const Ort::ConstValue weight = constant_weight(info); weight) layout_ = lay_out(weight);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return guarded([&] { compute(Ort::KernelContext(raw_context)); });
  }

 private:
  std::shared_ptr<const spike::DenseLayout<X>> lay_out(const Ort::ConstValue& weight) const {
    const std::vector<int64_t> shape = weight.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 2) node_.fail("weight must be [K, M], got " + shape_text(shape));
    return std::make_shared<const spike::DenseLayout<X>>(spike::lay_out_dense(
        weight.GetTensorData<X>(), static_cast<size_t>(shape[0]), static_cast<size_t>(shape[1])));
  }

  void compute(Ort::KernelContext context) {
    count_call(OpId::kSpikeMatMul);
    std::shared_ptr<const spike::DenseLayout<X>> layout = layout_ ? layout_ : lay_out(context.GetInput(1));
    const Ort::ConstValue x = context.GetInput(0);
    std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != static_cast<int64_t>(layout->inputs)) {
      node_.fail("x " + shape_text(shape) + " does not end in the weight's " + std::to_string(layout->inputs) +
                 " inputs");
    }
    // Kept per thread between calls: its buffers are reused (no allocation, no fresh pages per call).
    thread_local DenseRun<X, In> run;
    run.layout = layout.get();
    run.x = x.GetTensorData<In>();
    run.rows = element_count(std::vector<int64_t>(shape.begin(), shape.end() - 1));
    run.every = !layout->finite;
    run.bias = bias_of<X>(node_, context, layout->outputs);
    shape.back() = static_cast<int64_t>(layout->outputs);
    run.y = context.GetOutput(0, shape).GetTensorMutableData<spike::Out<X>>();
    if (run.rows == 0 || layout->outputs == 0) return;
    run.index.resize(run.rows * (layout->inputs + spike::kChunk));
    run.start.resize(run.rows * (layout->blocks + 1));
    run.value.resize(std::max<size_t>(1, run.rows * layout->inputs));
    if (run.ones_count < layout->inputs) {
      run.ones.resize(layout->inputs);
      std::fill(run.ones.data(), run.ones.data() + layout->inputs, spike::Acc<X>(1));
      run.ones_count = layout->inputs;
    }
    run.events.resize(run.rows);
    // Work items: every tile with all rows when the tiles alone keep the threads busy (4 items
    // per hardware thread), else the rows split too, in multiples of 8 (the more rows an item
    // has, the more events share each block of weights) — at most kItemRows rows per item, which
    // bounds a thread's partial sums (kItemRows × 32 float or 64 int32 lanes: 1 MiB at most).
    static const size_t items = 4 * std::max<size_t>(1, std::thread::hardware_concurrency());
    constexpr size_t kItemRows = 4096;
    const size_t splits = std::max<size_t>(
        (run.rows + kItemRows - 1) / kItemRows,
        std::min<size_t>((run.rows + 7) / 8, (items + layout->tiles - 1) / layout->tiles));
    run.row_block = ((run.rows + splits - 1) / splits + 7) / 8 * 8;
    parallel_for(context, run.gather_blocks(), &run, &DenseRun<X, In>::gather_entry);
    size_t events = 0;
    for (const spike::EventRow<X>& row : run.events) events += row.count;
    run.step = spike::dense_step(events, run.rows, layout->blocks);
    run.order.resize(run.rows);
    for (size_t r = 0; r < run.rows; ++r) run.order[r] = static_cast<uint32_t>(r);
    std::stable_sort(run.order.begin(), run.order.end(),
                     [&](uint32_t a, uint32_t b) { return run.events[a].count > run.events[b].count; });
    parallel_for(context, layout->tiles * run.row_blocks(), &run, &DenseRun<X, In>::compute_entry);
  }

  NodeLabel node_;
  std::shared_ptr<const spike::DenseLayout<X>> layout_;
};

// ============================================================================= SpikeConv
template <typename X, typename In>
struct ConvRun {
  const spike::ConvLayout<X>* layout;
  const spike::ConvGeometry* geometry;
  const In* x;
  bool every;
  const spike::Out<X>* bias;
  bool stream;  // y is larger than the caches
  spike::Out<X>* y;

  void sample(size_t b) const {
    const spike::ConvGeometry& s = *geometry;
    spike::conv_sample<X>(*layout, s, x + b * s.channels * s.pixels(), every, bias, stream,
                          y + b * s.outputs * s.out_h * s.out_w);
  }

  static void sample_entry(void* self, size_t b) { static_cast<const ConvRun*>(self)->sample(b); }
};

template <typename X, typename In = X>
class SpikeConvKernel {
 public:
  explicit SpikeConvKernel(const OrtKernelInfo* info) : node_(spike_layer_label<X>(info, "SpikeConv")) {
    auto positive = [&](const char* name) {
      const int64_t value = int_attr(info, name, 1);
      if (value < 1) node_.fail(std::string("attribute ") + name + " must be ≥ 1");
      return value;
    };
    auto padding = [&](const char* name) {
      const int64_t value = int_attr(info, name, 0);
      if (value < 0) node_.fail(std::string("attribute ") + name + " must be ≥ 0");
      return value;
    };
    base_.stride_h = positive("stride_h");
    base_.stride_w = positive("stride_w");
    base_.dilation_h = positive("dilation_h");
    base_.dilation_w = positive("dilation_w");
    base_.groups = static_cast<size_t>(positive("group"));
    base_.pad_top = padding("pad_top");
    base_.pad_left = padding("pad_left");
    pad_bottom_ = padding("pad_bottom");
    pad_right_ = padding("pad_right");
    if (const Ort::ConstValue weight = constant_weight(info); weight) {
      weight_shape_ = weight.GetTensorTypeAndShapeInfo().GetShape();
      check_weight(weight_shape_);
      spike::ConvGeometry s = base_;
      s.outputs = static_cast<size_t>(weight_shape_[0]);
      s.per_group = static_cast<size_t>(weight_shape_[1]);
      s.kernel_h = static_cast<size_t>(weight_shape_[2]);
      s.kernel_w = static_cast<size_t>(weight_shape_[3]);
      s.out_per_group = s.outputs / s.groups;
      layout_ = std::make_shared<const spike::ConvLayout<X>>(spike::lay_out_conv(weight.GetTensorData<X>(), s));
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return guarded([&] { compute(Ort::KernelContext(raw_context)); });
  }

 private:
  void check_weight(const std::vector<int64_t>& shape) const {
    if (shape.size() != 4 || shape[0] % static_cast<int64_t>(base_.groups) != 0) {
      node_.fail("weight must be [M, C/group, kh, kw] with M a multiple of group " + std::to_string(base_.groups) +
                 ", got " + shape_text(shape));
    }
  }

  void compute(Ort::KernelContext context) {
    count_call(OpId::kSpikeConv);
    const Ort::ConstValue x = context.GetInput(0);
    const std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    std::shared_ptr<const spike::ConvLayout<X>> layout = layout_;
    std::vector<int64_t> weight_shape = weight_shape_;
    if (!layout) {
      const Ort::ConstValue weight = context.GetInput(1);
      weight_shape = weight.GetTensorTypeAndShapeInfo().GetShape();
      check_weight(weight_shape);
    }
    if (shape.size() != 4 || shape[1] != weight_shape[1] * static_cast<int64_t>(base_.groups)) {
      node_.fail("x " + shape_text(shape) + " does not fit the weight " + shape_text(weight_shape) + " (group " +
                 std::to_string(base_.groups) + "): x must be [B, C, H, W] with C = group · weight dim 1");
    }
    spike::ConvGeometry s = base_;
    s.channels = static_cast<size_t>(shape[1]);
    s.height = static_cast<size_t>(shape[2]);
    s.width = static_cast<size_t>(shape[3]);
    s.outputs = static_cast<size_t>(weight_shape[0]);
    s.per_group = static_cast<size_t>(weight_shape[1]);
    s.kernel_h = static_cast<size_t>(weight_shape[2]);
    s.kernel_w = static_cast<size_t>(weight_shape[3]);
    s.out_per_group = s.outputs / s.groups;
    const int64_t out_h = (shape[2] + s.pad_top + pad_bottom_ - s.dilation_h * (weight_shape[2] - 1) - 1) / s.stride_h + 1;
    const int64_t out_w = (shape[3] + s.pad_left + pad_right_ - s.dilation_w * (weight_shape[3] - 1) - 1) / s.stride_w + 1;
    if (out_h < 1 || out_w < 1) {
      node_.fail("kernel " + shape_text(weight_shape) + " does not fit the padded input " + shape_text(shape));
    }
    s.out_h = static_cast<size_t>(out_h);
    s.out_w = static_cast<size_t>(out_w);
    if (!layout) {
      layout = std::make_shared<const spike::ConvLayout<X>>(
          spike::lay_out_conv(context.GetInput(1).GetTensorData<X>(), s));
    }
    ConvRun<X, In> run{};
    run.layout = layout.get();
    run.geometry = &s;
    run.x = x.GetTensorData<In>();
    run.every = !layout->finite;
    run.bias = bias_of<X>(node_, context, s.outputs);
    const std::vector<int64_t> y_shape{shape[0], static_cast<int64_t>(s.outputs), out_h, out_w};
    run.y = context.GetOutput(0, y_shape).GetTensorMutableData<spike::Out<X>>();
    if (element_count(y_shape) == 0) return;
    run.stream = static_cast<size_t>(element_count(y_shape)) * sizeof(spike::Out<X>) >= spike::kStreamingBytes;
    parallel_for(context, static_cast<size_t>(shape[0]), &run, &ConvRun<X, In>::sample_entry);
  }

  NodeLabel node_;
  spike::ConvGeometry base_;  // strides, pads, dilations, groups
  int64_t pad_bottom_ = 0, pad_right_ = 0;
  std::vector<int64_t> weight_shape_;
  std::shared_ptr<const spike::ConvLayout<X>> layout_;
};

// ============================================================================= ops
// X: the weight type; In: x's element type.
template <typename X, typename In, typename Kernel, const char* Name>
struct SpikeLayerOp : KernelOp<SpikeLayerOp<X, In, Kernel, Name>, Kernel> {
  static constexpr size_t kRequiredInputs = 2;
  const char* GetName() const { return Name; }

  // x, weight, bias
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 0 ? element_type<In>() : index == 1 ? element_type<X>() : element_type<spike::Out<X>>();
  }

  // y
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return element_type<spike::Out<X>>(); }
};

inline constexpr char kSpikeMatMulName[] = "SpikeMatMul";
inline constexpr char kSpikeConvName[] = "SpikeConv";

}  // namespace hnnx
