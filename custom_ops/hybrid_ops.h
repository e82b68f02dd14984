// hnnx.A2S and hnnx.S2A for onnxruntime: every coding and decoding, float and integer, and the
// streaming ports (A2S offset/count → end; S2A buffer0/filled0/windows0 → buffer/filled/windows).
// Attributes are checked as hnnx/ops/hybrid.py validates them; the numerics are in
// hybrid_kernels.h. Work is spread over the intra-op thread pool: A2S over (step, block of
// samples), S2A over blocks of elements.

#pragma once

#include <algorithm>
#include <vector>

#include "hybrid_kernels.h"
#include "ort_support.h"

namespace hnnx {

constexpr size_t kElementBlock = 4096;  // S2A: elements per work item

// ============================================================================= A2S
struct A2SNode : NodeLabel {
  hybrid::A2SParams params;
  int64_t steps = 1;
  bool integer = false;
  Ports ports;
};

inline A2SNode describe_a2s(const OrtKernelInfo* info) {
  A2SNode node;
  static_cast<NodeLabel&>(node) = label_of(info, "A2S");
  node.ports = ports_of(info);
  node.steps = int_attr(info, "steps", 0);
  if (node.steps < 1) node.fail("A2S attribute 'steps' must be ≥ 1, got " + std::to_string(node.steps));
  node.integer = choice_attr(node, info, "mode", "float", {"float", "integer"}) == "integer";
  const std::string coding = choice_attr(node, info, "coding", "direct", {"direct", "rate", "learnable"});
  node.params.coding = coding == "rate" ? hybrid::Coding::kRate
                       : coding == "learnable" ? hybrid::Coding::kLearnable : hybrid::Coding::kDirect;
  const std::string normalize = choice_attr(node, info, "normalize", "minmax", {"minmax", "clip"});
  node.params.normalize = normalize == "clip" ? hybrid::Normalize::kClip : hybrid::Normalize::kMinMax;
  const int64_t seed = int_attr(info, "seed", 0);
  if (seed < 0 || seed >= (int64_t{1} << 32)) node.fail("A2S attribute 'seed' must lie in [0, 2^32)");
  node.params.seed = static_cast<uint32_t>(seed);
  node.params.relu = choice_attr(node, info, "activation", "none", {"none", "relu"}) == "relu";
  const std::string converter = choice_attr(node, info, "converter", "identity", {"identity", "sign", "round"});
  node.params.converter = converter == "sign" ? hybrid::Converter::kSign
                          : converter == "round" ? hybrid::Converter::kRound : hybrid::Converter::kIdentity;
  const int64_t bits = int_attr(info, "bits", 8);
  if (bits < 2 || bits > 24) node.fail("A2S attribute 'bits' must lie in [2, 24]");
  node.params.bits = static_cast<int>(bits);
  const bool learnable = node.params.coding == hybrid::Coding::kLearnable;
  if (node.integer && (learnable || (node.params.coding == hybrid::Coding::kRate &&
                                     node.params.normalize != hybrid::Normalize::kMinMax))) {
    node.fail("integer-mode A2S supports direct coding and rate coding with minmax normalisation only");
  }
  if (learnable && !node.ports.input(1)) node.fail("coding 'learnable' needs input 1 (weight, [T])");
  if (!learnable && (node.ports.input(1) || node.ports.input(2))) {
    node.fail("coding '" + coding + "' takes no weight/bias inputs");
  }
  return node;
}

// One call: x [N, M] → y [count, N, M] for steps first … first + count − 1.
template <typename T>
struct A2SRun {
  const A2SNode* node;
  const T* x;
  T* y;
  size_t samples, elements, first, count, sample_block;
  const float* weight = nullptr;  // learnable: [steps]
  const float* bias = nullptr;
  std::vector<T> direct;                   // direct coding: the coded value (the same every step), [N, M]
  std::vector<float> probability;          // float rate coding: p, [N, M]
  std::vector<int64_t> scaled;             // integer rate coding: (x − min)·2^24, [N, M]
  std::vector<int64_t> range;              // integer rate coding: max − min per sample
  std::vector<uint32_t> element_words;     // rate coding: mix32(i), [M]

  size_t blocks_per_step() const { return (samples + sample_block - 1) / sample_block; }

  // Everything that does not depend on the step, once per call.
  void prepare() {
    const hybrid::A2SParams& p = node->params;
    const size_t total = samples * elements;
    if (p.coding == hybrid::Coding::kDirect) {
      direct.resize(total);
      for (size_t k = 0; k < total; ++k) {
        if constexpr (std::is_same_v<T, float>) {
          direct[k] = hybrid::a2s_post(p, x[k]);
        } else {
          direct[k] = hybrid::a2s_post_integer(p, x[k]);
        }
      }
    } else if (p.coding == hybrid::Coding::kRate) {
      element_words.resize(elements);
      for (size_t i = 0; i < elements; ++i) element_words[i] = hybrid::mix32(static_cast<uint32_t>(i));
      if constexpr (std::is_same_v<T, float>) {
        probability.resize(total);
        for (size_t n = 0; n < samples; ++n) {
          if (p.normalize == hybrid::Normalize::kMinMax) {
            hybrid::rate_probability_minmax(x + n * elements, elements, probability.data() + n * elements);
          } else {
            hybrid::rate_probability_clip(x + n * elements, elements, probability.data() + n * elements);
          }
        }
      } else {
        scaled.resize(total);
        range.resize(samples);
        for (size_t n = 0; n < samples; ++n) {
          range[n] = hybrid::rate_scaled_integer(x + n * elements, elements, scaled.data() + n * elements);
        }
      }
    }
  }

  // Step `local` of the call (absolute step first + local) for samples of block `block`.
  void run_item(size_t item) const {
    const size_t per_step = blocks_per_step();
    const size_t local = item / per_step;
    const size_t n0 = (item % per_step) * sample_block;
    const size_t n1 = std::min(samples, n0 + sample_block);
    const hybrid::A2SParams& p = node->params;
    const size_t step = first + local;
    T* out = y + (local * samples) * elements;
    if (p.coding == hybrid::Coding::kDirect) {
      std::copy(direct.data() + n0 * elements, direct.data() + n1 * elements, out + n0 * elements);
      return;
    }
    if (p.coding == hybrid::Coding::kLearnable) {
      if constexpr (std::is_same_v<T, float>) {
        const float w = weight[step];
        for (size_t k = n0 * elements; k < n1 * elements; ++k) {
          float v = w * x[k];
          if (bias != nullptr) v = v + bias[step];
          out[k] = hybrid::a2s_post(p, v);
        }
      }
      return;
    }
    // Rate coding: the words of this step, then one comparison per sample and element.
    const uint32_t word = hybrid::step_word(p.seed, static_cast<uint32_t>(step));
    std::vector<uint32_t> top(elements);  // r >> 8, the 24-bit draw
    for (size_t i = 0; i < elements; ++i) top[i] = hybrid::draw(word, element_words[i]) >> 8;
    if constexpr (std::is_same_v<T, float>) {
      std::vector<float> uniform(elements);
      for (size_t i = 0; i < elements; ++i) uniform[i] = static_cast<float>(top[i]) * 0x1p-24f;
      for (size_t n = n0; n < n1; ++n) {
        const float* prob = probability.data() + n * elements;
        T* row = out + n * elements;
        for (size_t i = 0; i < elements; ++i) row[i] = hybrid::a2s_post(p, uniform[i] < prob[i] ? 1.0f : 0.0f);
      }
    } else {
      for (size_t n = n0; n < n1; ++n) {
        const int64_t* scale = scaled.data() + n * elements;
        const int64_t spread = range[n];
        T* row = out + n * elements;
        for (size_t i = 0; i < elements; ++i) {
          const bool fired = static_cast<int64_t>(top[i]) * spread < scale[i];
          row[i] = hybrid::a2s_post_integer(p, static_cast<T>(fired ? 1 : 0));
        }
      }
    }
  }

  static void item_entry(void* self, size_t item) { static_cast<const A2SRun*>(self)->run_item(item); }
};

template <typename T>
class A2SKernel {
 public:
  explicit A2SKernel(const OrtKernelInfo* info) : node_(describe_a2s(info)) {
    constexpr bool integer_kernel = !std::is_same_v<T, float>;
    if (node_.integer != integer_kernel) {
      node_.fail(std::string("A2S in ") + (node_.integer ? "integer mode needs int8 or int32" : "float mode needs float") +
                 " input");
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return guarded([&] { compute(Ort::KernelContext(raw_context)); });
  }

 private:
  void compute(Ort::KernelContext context) {
    count_call(OpId::kA2S);
    const Ort::ConstValue x = context.GetInput(0);
    const std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty()) node_.fail("x must be [N, ...], got a scalar");
    const int64_t total = node_.steps;
    int64_t first = 0;
    if (const Ort::ConstValue offset = optional_input(context, 3); offset) first = scalar_int64(node_, "offset", offset);
    int64_t count = total - first;
    if (const Ort::ConstValue given = optional_input(context, 4); given) count = scalar_int64(node_, "count", given);
    if (first < 0 || count < 0 || first + count > total) {
      node_.fail("A2S steps " + std::to_string(first) + " … " + std::to_string(first + count - 1) + " (offset " +
                 std::to_string(first) + ", count " + std::to_string(count) + ") are outside its " +
                 std::to_string(total) + " steps");
    }
    A2SRun<T> run{};
    run.node = &node_;
    run.x = x.GetTensorData<T>();
    run.samples = static_cast<size_t>(shape[0]);
    run.elements = element_count(shape, 1);
    run.first = static_cast<size_t>(first);
    run.count = static_cast<size_t>(count);
    if (node_.params.coding == hybrid::Coding::kLearnable) {
      for (size_t port : {size_t{1}, size_t{2}}) {
        const Ort::ConstValue table = optional_input(context, port);
        if (!table) continue;
        const std::vector<int64_t> table_shape = table.GetTensorTypeAndShapeInfo().GetShape();
        if (table_shape.size() != 1 || table_shape[0] != total) {
          node_.fail(std::string("A2S ") + (port == 1 ? "weight" : "bias") + " must have shape [" +
                     std::to_string(total) + "] (one per step), got " + shape_text(table_shape));
        }
        (port == 1 ? run.weight : run.bias) = table.GetTensorData<float>();
      }
    }
    std::vector<int64_t> out_shape{count};
    out_shape.insert(out_shape.end(), shape.begin(), shape.end());
    run.y = context.GetOutput(0, out_shape).GetTensorMutableData<T>();
    if (context.GetOutputCount() > 1) {
      if (Ort::UnownedValue end = context.GetOutput(1, std::vector<int64_t>{}); end) {
        end.GetTensorMutableData<int64_t>()[0] = first + count;
      }
    }
    if (run.count == 0 || run.samples * run.elements == 0) return;
    // One work item per step; a call of few steps also splits the samples, so threads share it.
    const size_t blocks = run.count >= 8 ? 1 : std::min(run.samples, (7 + run.count) / run.count);
    run.sample_block = (run.samples + blocks - 1) / blocks;
    run.prepare();
    parallel_for(context, run.count * run.blocks_per_step(), &run, &A2SRun<T>::item_entry);
  }

  A2SNode node_;
};

template <typename T>
struct A2SOp : KernelOp<A2SOp<T>, A2SKernel<T>> {
  static constexpr size_t kRequiredInputs = 1;
  const char* GetName() const { return "A2S"; }

  // x, weight, bias, offset, count
  size_t GetInputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    if (index == 0) return element_type<T>();
    return index < 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }

  // y, end
  size_t GetOutputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == 0 ? element_type<T>() : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }
};

// ============================================================================= S2A
struct S2ANode : NodeLabel {
  hybrid::S2AParams params;
  bool integer = false;
  bool streaming = false;
  Ports ports;
};

inline S2ANode describe_s2a(const OrtKernelInfo* info) {
  S2ANode node;
  static_cast<NodeLabel&>(node) = label_of(info, "S2A");
  node.ports = ports_of(info);
  const std::string decoding = choice_attr(node, info, "decoding", "rate", {"rate", "global", "learnable"});
  hybrid::S2AParams& p = node.params;
  p.decoding = decoding == "global" ? hybrid::Decoding::kGlobal
               : decoding == "learnable" ? hybrid::Decoding::kLearnable : hybrid::Decoding::kRate;
  node.integer = choice_attr(node, info, "mode", "float", {"float", "integer"}) == "integer";
  p.relu = choice_attr(node, info, "activation", "none", {"none", "relu"}) == "relu";
  if (node.integer && p.decoding == hybrid::Decoding::kLearnable) {
    node.fail("integer-mode S2A supports rate and global decoding only");
  }
  if (p.decoding != hybrid::Decoding::kGlobal) {
    const int64_t window = int_attr(info, "window", 1);
    const int64_t kernel = int_attr(info, "kernel", 0) ? int_attr(info, "kernel", 0) : window;
    const int64_t stride = int_attr(info, "stride", 0) ? int_attr(info, "stride", 0) : kernel;
    const int64_t padding = int_attr(info, "padding", 0);
    if (window < 1 || kernel < 1 || stride < 1 || padding < 0) {
      node.fail("S2A needs window, kernel, stride ≥ 1 and padding ≥ 0");
    }
    if (p.decoding == hybrid::Decoding::kRate && padding) node.fail("S2A padding applies to mode 'learnable' only");
    if (kernel > window + 2 * padding) node.fail("S2A kernel is longer than the (padded) window");
    p.window = static_cast<size_t>(window);
    p.kernel = static_cast<size_t>(kernel);
    p.stride = static_cast<size_t>(stride);
    p.padding = static_cast<size_t>(padding);
    p.per_window = (p.window + 2 * p.padding - p.kernel) / p.stride + 1;
  }
  const bool learnable = p.decoding == hybrid::Decoding::kLearnable;
  if (learnable && !node.ports.input(1)) node.fail("decoding 'learnable' needs input 1 (weight, [T / window, kernel])");
  if (!learnable && (node.ports.input(1) || node.ports.input(2))) {
    node.fail("decoding '" + decoding + "' takes no weight/bias inputs");
  }
  node.streaming = node.ports.input(3) || node.ports.input(4) || node.ports.input(5) || node.ports.outputs > 1;
  return node;
}

template <typename T>
struct S2ARun {
  const S2ANode* node;
  hybrid::Rows<T> rows;         // the steps decoded (streaming: held steps, then x)
  size_t steps = 0;             // of x
  size_t windows = 0;           // complete windows decoded
  size_t done = 0;              // windows completed before this call (streaming)
  size_t count = 0;             // global: steps so far
  const float* weight = nullptr;  // learnable [rows, kernel]
  size_t weight_rows = 0;
  const float* bias = nullptr;  // learnable [rows]
  size_t bias_rows = 0;
  const T* running = nullptr;   // global, streaming: the running sum held, [E]
  T* total_out = nullptr;       // global, streaming: the running sum after this call
  T* y = nullptr;

  // Learnable rows of window j (rows: windows, the last repeating; one row: shared).
  size_t row_of(size_t j, size_t table_rows) const { return std::min(done + j, table_rows - 1); }

  void run_block(size_t block) const {
    const size_t e0 = block * kElementBlock;
    const size_t e1 = std::min(rows.elements, e0 + kElementBlock);
    if (node->params.decoding == hybrid::Decoding::kGlobal) {
      hybrid::s2a_global(node->params, running, rows.x, steps, rows.elements, count, e0, e1, total_out, y);
      return;
    }
    const size_t kernel = node->params.kernel;
    auto weight_row = [&](size_t j) { return weight + row_of(j, weight_rows) * kernel; };
    auto bias_row = [&](size_t j) -> const float* { return bias ? bias + row_of(j, bias_rows) : nullptr; };
    hybrid::s2a_windows(node->params, rows, windows, weight_row, bias_row, e0, e1, y);
  }

  static void block_entry(void* self, size_t block) { static_cast<const S2ARun*>(self)->run_block(block); }
};

template <typename T>
class S2AKernel {
 public:
  explicit S2AKernel(const OrtKernelInfo* info) : node_(describe_s2a(info)) {
    constexpr bool integer_kernel = std::is_same_v<T, int32_t>;
    if (node_.integer != integer_kernel) {
      node_.fail(std::string("S2A in ") + (node_.integer ? "integer mode needs int32" : "float mode needs float") +
                 " spikes");
    }
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return guarded([&] { compute(Ort::KernelContext(raw_context)); });
  }

 private:
  void compute(Ort::KernelContext context) {
    count_call(OpId::kS2A);
    const hybrid::S2AParams& p = node_.params;
    const Ort::ConstValue x = context.GetInput(0);
    const std::vector<int64_t> shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty()) node_.fail("x must be [T, N, ...], got a scalar");
    const std::vector<int64_t> rest(shape.begin() + 1, shape.end());
    S2ARun<T> run{};
    run.node = &node_;
    run.steps = static_cast<size_t>(shape[0]);
    run.rows.x = x.GetTensorData<T>();
    run.rows.elements = element_count(rest);
    const bool global = p.decoding == hybrid::Decoding::kGlobal;
    const size_t buffer_rows = global ? 1 : p.window;
    std::vector<int64_t> buffer_shape{static_cast<int64_t>(buffer_rows)};
    buffer_shape.insert(buffer_shape.end(), rest.begin(), rest.end());

    // The state: held steps (or the running sum), steps held, windows completed.
    std::vector<T> held;
    size_t filled = 0;
    if (node_.streaming) {
      if (const Ort::ConstValue f = optional_input(context, 4); f) {
        const int64_t value = scalar_int64(node_, "filled0", f);
        if (value < 0) node_.fail("S2A filled0 = " + std::to_string(value) + " must be ≥ 0");
        filled = static_cast<size_t>(value);
      }
      if (const Ort::ConstValue w = optional_input(context, 5); w) {
        const int64_t value = scalar_int64(node_, "windows0", w);
        if (value < 0) node_.fail("S2A windows0 = " + std::to_string(value) + " must be ≥ 0");
        run.done = static_cast<size_t>(value);
      }
      if (!global && filled >= p.window) {
        node_.fail("S2A filled0 = " + std::to_string(filled) + " must lie in [0, " + std::to_string(p.window) + ")");
      }
      held.assign(buffer_rows * run.rows.elements, T(0));
      if (const Ort::ConstValue b = optional_input(context, 3); b) {
        Broadcast<T>(node_, "buffer0", b, buffer_shape, "the buffer shape").read(0, held.size(), held.data());
      }
    }

    if (global) {
      run.count = filled + run.steps;
      if (run.count == 0) node_.fail("S2A global rate of an empty sequence (T = 0)");
      if (node_.streaming) run.running = held.data();
      run.y = context.GetOutput(0, rest).GetTensorMutableData<T>();
      if (node_.streaming && context.GetOutputCount() > 1) {
        if (Ort::UnownedValue out = context.GetOutput(1, buffer_shape); out) {
          run.total_out = out.GetTensorMutableData<T>();
        }
      }
      write_counter(context, 2, static_cast<int64_t>(run.count));
      write_counter(context, 3, static_cast<int64_t>(run.done));
    } else {
      const size_t length = filled + run.steps;
      if (!node_.streaming && (run.steps % p.window || run.steps == 0)) {
        node_.fail("S2A needs T to be a positive multiple of window " + std::to_string(p.window) + ", got T = " +
                   std::to_string(run.steps));
      }
      run.windows = length / p.window;
      run.rows.held = held.data();
      run.rows.held_count = filled;
      if (p.decoding == hybrid::Decoding::kLearnable) read_tables(context, run);
      std::vector<int64_t> y_shape{static_cast<int64_t>(run.windows * p.per_window)};
      y_shape.insert(y_shape.end(), rest.begin(), rest.end());
      run.y = context.GetOutput(0, y_shape).GetTensorMutableData<T>();
      if (node_.streaming) write_window_state(context, run, buffer_shape, length);
    }
    if (run.rows.elements == 0) return;
    const size_t blocks = (run.rows.elements + kElementBlock - 1) / kElementBlock;
    parallel_for(context, blocks, &run, &S2ARun<T>::block_entry);
  }

  // Learnable weight [rows, kernel] and bias [rows]: one row per window, or one shared row
  // (streaming: the last row repeats for later windows).
  void read_tables(const Ort::KernelContext& context, S2ARun<T>& run) const {
    const size_t kernel = node_.params.kernel;
    const Ort::ConstValue weight = context.GetInput(1);
    const std::vector<int64_t> w_shape = weight.GetTensorTypeAndShapeInfo().GetShape();
    const bool fits_windows = [&](int64_t rows) {
      return node_.streaming ? rows >= 1 : (rows == 1 || rows == static_cast<int64_t>(run.windows));
    }(w_shape.empty() ? 0 : w_shape[0]);
    if (w_shape.size() != 2 || w_shape[1] != static_cast<int64_t>(kernel) || !fits_windows) {
      node_.fail("S2A weight must have shape [" + std::string(node_.streaming ? "rows" : std::to_string(run.windows) +
                 " or 1") + ", " + std::to_string(kernel) + "] (rows: windows, columns: kernel), got " +
                 shape_text(w_shape));
    }
    run.weight = weight.GetTensorData<float>();
    run.weight_rows = static_cast<size_t>(w_shape[0]);
    if (const Ort::ConstValue bias = optional_input(context, 2); bias) {
      const std::vector<int64_t> b_shape = bias.GetTensorTypeAndShapeInfo().GetShape();
      const bool fits = b_shape.size() == 1 && (node_.streaming ? b_shape[0] >= 1
                                                 : (b_shape[0] == 1 || b_shape[0] == static_cast<int64_t>(run.windows)));
      if (!fits) node_.fail("S2A bias must have shape [" + std::to_string(run.windows) + " or 1], got " +
                            shape_text(b_shape));
      run.bias = bias.GetTensorData<float>();
      run.bias_rows = static_cast<size_t>(b_shape[0]);
    }
  }

  // Streaming windowed decoding: the unfinished window's steps (zero-padded), their number and
  // the windows completed so far.
  void write_window_state(const Ort::KernelContext& context, const S2ARun<T>& run,
                          const std::vector<int64_t>& buffer_shape, size_t length) const {
    const size_t used = run.windows * node_.params.window;
    const size_t left = length - used;
    const size_t elements = run.rows.elements;
    if (context.GetOutputCount() > 1) {
      if (Ort::UnownedValue out = context.GetOutput(1, buffer_shape); out) {
        T* buffer = out.GetTensorMutableData<T>();
        for (size_t q = 0; q < node_.params.window; ++q) {
          T* row = buffer + q * elements;
          if (q < left) {
            std::copy(run.rows.row(used + q), run.rows.row(used + q) + elements, row);
          } else {
            std::fill(row, row + elements, T(0));
          }
        }
      }
    }
    write_counter(context, 2, static_cast<int64_t>(left));
    write_counter(context, 3, static_cast<int64_t>(run.done + run.windows));
  }

  static void write_counter(const Ort::KernelContext& context, size_t index, int64_t value) {
    if (context.GetOutputCount() <= index) return;
    if (Ort::UnownedValue out = context.GetOutput(index, std::vector<int64_t>{}); out) {
      out.GetTensorMutableData<int64_t>()[0] = value;
    }
  }

  S2ANode node_;
};

template <typename T>
struct S2AOp : KernelOp<S2AOp<T>, S2AKernel<T>> {
  static constexpr size_t kRequiredInputs = 1;
  const char* GetName() const { return "S2A"; }

  // x, weight, bias, buffer0, filled0, windows0
  size_t GetInputTypeCount() const { return 6; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    if (index == 0 || index == 3) return element_type<T>();
    return index < 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }

  // y, buffer, filled, windows
  size_t GetOutputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index <= 1 ? element_type<T>() : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  }
};

}  // namespace hnnx
