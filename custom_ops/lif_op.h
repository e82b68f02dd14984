// hnnx.LIF for onnxruntime: reads the node's attributes and ports, checks and broadcasts the
// initial states, allocates the outputs and spreads neuron blocks (or, for a recurrent node,
// samples) over the intra-op thread pool. The numerics are in lif_kernel.h.

#pragma once

#include "lif_kernel.h"
#include "ort_support.h"

namespace hnnx {

// ----------------------------------------------------------------------------- node description
// Which parts of the equations a node uses: hnnx/ops/lif.py `_flags`, from attributes and
// the connected ports (an output slot counts when it exists in the node, even if unnamed).
struct LifNode : NodeLabel {
  bool integer = false;
  Reset reset = Reset::kHard;
  bool adapt = false;
  bool refr = false;
  bool rec = false;  // recurrent: input 5 (recurrent_weight) connected
  bool has_input[6] = {true, false, false, false, false, false};
  size_t n_outputs = 1;
  int32_t state_bits = 28;
  float v_init = 0.0f;
  // Raw attribute values (float32 as the node stores them), resolved per type below.
  float threshold = 1.0f, v_reset = 0.0f, reset_decrement = 0.0f, alpha = 1.0f, beta = 0.0f;
  OptionalFloat v_lower;
  float theta_alpha = 1.0f, theta_beta = 0.0f, theta_increment = 0.0f;
  int64_t refractory = 0;
  int64_t steps = 0;  // > 0: the current [1, N, ...] is that of each of `steps` steps
};

inline Reset parse_reset(const LifNode& node, const std::string& text) {
  if (text == "hard") return Reset::kHard;
  if (text == "soft") return Reset::kSoft;
  if (text == "soft_constant") return Reset::kSoftConstant;
  if (text == "none") return Reset::kNone;
  node.fail("unknown reset_mode '" + text + "' (hard, soft, soft_constant or none)");
}

inline LifNode describe_lif(const OrtKernelInfo* info) {
  Ort::ConstKernelInfo kernel_info(info);
  LifNode node;
  node.op = "LIF";
  node.name = kernel_info.GetNodeName();
  const size_t n_inputs = kernel_info.GetInputCount();
  for (size_t i = 0; i < 6; ++i) node.has_input[i] = i < n_inputs && !kernel_info.GetInputName(i).empty();
  node.n_outputs = kernel_info.GetOutputCount();

  const std::string mode = string_attr(info, "mode", "float");
  if (mode != "float" && mode != "integer") node.fail("unknown mode '" + mode + "' (float or integer)");
  node.integer = mode == "integer";
  node.reset = parse_reset(node, string_attr(info, "reset_mode", "hard"));
  node.threshold = float_attr(info, "threshold", 1.0f);
  node.v_reset = float_attr(info, "v_reset", 0.0f);
  node.reset_decrement = float_attr(info, "reset_decrement", 0.0f);
  node.v_init = float_attr(info, "v_init", 0.0f);
  node.alpha = float_attr(info, "alpha", 1.0f);
  node.beta = float_attr(info, "beta", 0.0f);
  node.v_lower = read_float(info, "v_lower");
  node.theta_alpha = float_attr(info, "theta_alpha", 1.0f);
  node.theta_beta = float_attr(info, "theta_beta", 0.0f);
  node.theta_increment = float_attr(info, "theta_increment", 0.0f);
  node.refractory = int_attr(info, "refractory", 0);
  node.steps = int_attr(info, "steps", 0);
  if (node.steps < 0) node.fail("steps must be ≥ 0");
  const int64_t bits = int_attr(info, "state_bits", 28);

  if (!(node.alpha >= 0.0f && node.alpha <= 1.0f)) node.fail("alpha must lie in [0, 1]");
  if (!(node.theta_alpha >= 0.0f && node.theta_alpha <= 1.0f)) node.fail("theta_alpha must lie in [0, 1]");
  if (node.refractory < 0 || node.refractory > INT32_MAX) node.fail("refractory must be a step count ≥ 0");
  if (node.integer && (bits < 2 || bits > 31)) node.fail("state_bits must lie in [2, 31]");
  node.state_bits = static_cast<int32_t>(bits);

  const bool theta_used = node.theta_alpha != 1.0f || node.theta_beta != 0.0f || node.theta_increment != 0.0f;
  node.adapt = theta_used || node.has_input[2] || node.n_outputs > 2;
  node.refr = node.refractory > 0 || node.has_input[3] || node.n_outputs > 3;
  node.rec = node.has_input[5];
  if (node.n_outputs > 5 || n_inputs > 6) node.fail("takes at most 6 inputs and 5 outputs");
  if ((node.has_input[4] || node.n_outputs > 4) && !node.rec) {
    node.fail("port 4 (last_spikes0 / last_spikes) needs the recurrent_weight input (port 5)");
  }
  return node;
}

// Integer mode: a membrane-domain constant must be an integer of magnitude ≤ 2^24 inside the
// state range (hnnx/ops/lif.py validate); checked here too for models that skipped hnnx.
inline int32_t integer_constant(const LifNode& node, const char* name, float value, int32_t lo, int32_t hi) {
  if (value != std::trunc(value) || std::fabs(value) > static_cast<float>(kExactAttributeLimit)) {
    node.fail(std::string("integer-mode attribute ") + name + " must be an integer of magnitude ≤ 2^24");
  }
  const auto integer = static_cast<int32_t>(value);
  if (integer < lo || integer > hi) {
    node.fail(std::string("integer-mode attribute ") + name + " exceeds the state range");
  }
  return integer;
}

inline int32_t q8(const LifNode& node, const char* name, float factor) {
  const float scaled = factor * 256.0f;  // exact: a power-of-two scaling
  if (scaled != std::trunc(scaled)) {
    node.fail(std::string("integer-mode attribute ") + name + " must be a multiple of 1/256");
  }
  return static_cast<int32_t>(std::nearbyint(scaled));
}

template <typename T>
LifConstants<T> constants_for(const LifNode& node) {
  LifConstants<T> c{};
  c.refractory = static_cast<int32_t>(node.refractory);
  if constexpr (std::is_same_v<T, float>) {
    c.threshold = node.threshold;
    c.v_reset = node.v_reset;
    c.reset_decrement = node.reset_decrement;
    c.beta = node.beta != 0.0f ? node.beta : -0.0f;  // −0.0: x + (−0.0) = x exactly, as with no beta
    c.v_lower = node.v_lower.present ? node.v_lower.value : -std::numeric_limits<float>::infinity();
    c.theta_beta = node.theta_beta;
    c.theta_increment = node.theta_increment;
    c.alpha = node.alpha;
    c.theta_alpha = node.theta_alpha;
  } else {
    c.lo = -(int32_t{1} << (node.state_bits - 1));
    c.hi = static_cast<int32_t>((int64_t{1} << (node.state_bits - 1)) - 1);
    c.threshold = integer_constant(node, "threshold", node.threshold, c.lo, c.hi);
    c.v_reset = integer_constant(node, "v_reset", node.v_reset, c.lo, c.hi);
    c.reset_decrement = integer_constant(node, "reset_decrement", node.reset_decrement, c.lo, c.hi);
    c.beta = integer_constant(node, "beta", node.beta, c.lo, c.hi);
    c.v_lower = node.v_lower.present ? integer_constant(node, "v_lower", node.v_lower.value, c.lo, c.hi)
                                     : std::numeric_limits<int32_t>::min();
    c.theta_beta = integer_constant(node, "theta_beta", node.theta_beta, c.lo, c.hi);
    c.theta_increment = integer_constant(node, "theta_increment", node.theta_increment, c.lo, c.hi);
    integer_constant(node, "v_init", node.v_init, c.lo, c.hi);
    c.alpha_q8 = q8(node, "alpha", node.alpha);
    c.theta_alpha_q8 = q8(node, "theta_alpha", node.theta_alpha);
  }
  return c;
}

// ----------------------------------------------------------------------------- one run
template <typename T>
struct LifRun {
  const LifNode* node;
  const LifConstants<T>* c;
  LifFunctions<T> functions;
  const T* current;
  size_t current_step;  // offset of one step's current: `neurons`, or 0 when every step has the same
  T* spikes;
  size_t neurons, steps;
  T v_fill;
  Broadcast<T> v0, theta0, last0;
  Broadcast<int32_t> refractory0;
  T* v_out;
  T* theta_out;
  int32_t* refractory_out;
  T* last_out;
  const T* weight;      // recurrent nodes: [features, features]
  size_t features = 0;  // recurrent nodes: neurons per sample

  size_t blocks() const { return (neurons + kBlock - 1) / kBlock; }

  // Admit the initial states of neurons [first, first + n) as the neuron holds them
  // (lif.py `_admitted`).
  void initial(size_t first, size_t n, T* v, T* theta_a, int32_t* counter) const {
    if (v0.present()) {
      v0.read(first, n, v);
    } else {
      std::fill(v, v + n, v_fill);
    }
    if (node->adapt) {
      if (theta0.present()) {
        theta0.read(first, n, theta_a);
      } else {
        std::fill(theta_a, theta_a + n, T(0));
      }
    }
    if constexpr (std::is_same_v<T, int32_t>) {
      for (size_t i = 0; i < n; ++i) v[i] = std::min(std::max(v[i], c->lo), c->hi);
      if (node->adapt) {
        for (size_t i = 0; i < n; ++i) theta_a[i] = std::min(std::max(theta_a[i], c->lo), c->hi);
      }
    }
    if (node->refr) {
      if (refractory0.present()) {
        refractory0.read(first, n, counter);
        for (size_t i = 0; i < n; ++i) counter[i] = std::max(counter[i], 0);
      } else {
        std::fill(counter, counter + n, 0);
      }
    }
  }

  void final(size_t first, size_t n, const T* v, const T* theta_a, const int32_t* counter) const {
    if (v_out) std::memcpy(v_out + first, v, n * sizeof(T));
    if (theta_out) std::memcpy(theta_out + first, theta_a, n * sizeof(T));
    if (refractory_out) std::memcpy(refractory_out + first, counter, n * sizeof(int32_t));
  }

  // A block of neurons of a node without recurrence: every step, states in local arrays.
  void run_block(size_t block) const {
    alignas(64) T v[kBlock];
    alignas(64) T theta_a[kBlock];
    alignas(64) int32_t counter[kBlock];
    const size_t first = block * kBlock;
    const size_t n = std::min(kBlock, neurons - first);
    initial(first, n, v, theta_a, counter);
    functions.block(*c, current + first, current_step, spikes + first, neurons, steps, n, v, theta_a, counter);
    final(first, n, v, theta_a, counter);
  }

  // One sample of a recurrent node (its neurons are coupled through the weight).
  void run_sample(size_t sample) const {
    const size_t f = features;
    const size_t first = sample * f;
    std::vector<T> v(f), theta_a(f), last(f);
    std::vector<int32_t> counter(f);
    std::vector<RecurrentSum<T>> sum(f);
    initial(first, f, v.data(), theta_a.data(), counter.data());
    if (last0.present()) {
      last0.read(first, f, last.data());
    } else {
      std::fill(last.begin(), last.end(), T(0));
    }
    functions.recurrent(*c, current + first, current_step, spikes + first, neurons, steps, f, weight, v.data(), theta_a.data(),
                        counter.data(), last.data(), sum.data());
    final(first, f, v.data(), theta_a.data(), counter.data());
    if (last_out) std::memcpy(last_out + first, last.data(), f * sizeof(T));
  }

  static void run_block_entry(void* self, size_t block) { static_cast<const LifRun*>(self)->run_block(block); }
  static void run_sample_entry(void* self, size_t sample) { static_cast<const LifRun*>(self)->run_sample(sample); }
};

// ----------------------------------------------------------------------------- kernel
template <typename T>
class LifKernel {
 public:
  explicit LifKernel(const OrtKernelInfo* info) : node_(describe_lif(info)) {
    constexpr bool integer_kernel = std::is_same_v<T, int32_t>;
    if (node_.integer != integer_kernel) {
      node_.fail(std::string("LIF in ") + (node_.integer ? "integer" : "float") + " mode needs " +
                 (node_.integer ? "int32" : "float") + " current, got " + (integer_kernel ? "int32" : "float"));
    }
    constants_ = constants_for<T>(node_);
    if constexpr (integer_kernel) {
      v_fill_ = static_cast<int32_t>(node_.v_init);
    } else {
      v_fill_ = node_.v_init;
    }
    functions_ = select_lif_steps<T>(node_.reset, node_.adapt, node_.refr);
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* raw_context) {
    return guarded([&] { compute(Ort::KernelContext(raw_context)); });
  }

 private:
  void compute(Ort::KernelContext context) {
    count_call(OpId::kLif);
    const Ort::ConstValue current = context.GetInput(0);
    std::vector<int64_t> shape = current.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty()) node_.fail("current must have a time axis: [T, N, ...], got a scalar");
    const bool constant = node_.steps > 0;
    if (constant && shape[0] != 1) {
      node_.fail("with steps = " + std::to_string(node_.steps) + " the current is one step's, [1, N, ...], got " +
                 shape_text(shape));
    }
    if (constant) shape[0] = node_.steps;  // the spikes' shape
    const std::vector<int64_t> neuron_shape(shape.begin() + 1, shape.end());
    size_t neurons = 1;
    for (int64_t d : neuron_shape) neurons *= static_cast<size_t>(d);

    LifRun<T> run{};
    run.node = &node_;
    run.c = &constants_;
    run.functions = functions_;
    run.current = current.GetTensorData<T>();
    run.current_step = constant ? 0 : neurons;
    run.neurons = neurons;
    run.steps = static_cast<size_t>(shape[0]);
    run.v_fill = v_fill_;
    const size_t n_inputs = context.GetInputCount();
    auto input = [&](size_t index) -> Ort::ConstValue {
      return index < n_inputs ? context.GetInput(index) : Ort::ConstValue{nullptr};
    };
    if (const Ort::ConstValue v0 = input(1); v0) run.v0 = Broadcast<T>(node_, "v0", v0, neuron_shape, "the neuron shape");
    if (const Ort::ConstValue theta0 = input(2); theta0) {
      run.theta0 = Broadcast<T>(node_, "theta0", theta0, neuron_shape, "the neuron shape");
    }
    if (const Ort::ConstValue r0 = input(3); r0) {
      run.refractory0 = Broadcast<int32_t>(node_, "refractory0", r0, neuron_shape, "the neuron shape");
    }
    if (const Ort::ConstValue last0 = input(4); last0) {
      run.last0 = Broadcast<T>(node_, "last_spikes0", last0, neuron_shape, "the neuron shape");
    }
    if (node_.rec) {
      if (shape.size() < 2) node_.fail("a recurrent node needs a current [T, N, ...], got " + shape_text(shape));
      run.features = 1;
      for (size_t i = 2; i < shape.size(); ++i) run.features *= static_cast<size_t>(shape[i]);
      const Ort::ConstValue weight = input(5);
      const std::vector<int64_t> w_shape = weight.GetTensorTypeAndShapeInfo().GetShape();
      const auto f = static_cast<int64_t>(run.features);
      if (w_shape.size() != 2 || w_shape[0] != f || w_shape[1] != f || f == 0) {
        node_.fail("recurrent_weight of shape " + shape_text(w_shape) + " does not match the current " +
                   shape_text(shape) + ": it must be [F, F] with F = " + std::to_string(f) + " neurons per sample");
      }
      run.weight = weight.GetTensorData<T>();
      if constexpr (std::is_same_v<T, float>) {
        // Skipping silent presynaptic neurons equals the op's full sum only for finite weights.
        for (size_t i = 0; i < run.features * run.features; ++i) {
          if (!std::isfinite(run.weight[i])) node_.fail("recurrent_weight holds NaN or infinity");
        }
      }
    }

    run.spikes = context.GetOutput(0, shape).GetTensorMutableData<T>();
    const size_t n_outputs = context.GetOutputCount();
    auto output = [&](size_t index) -> Ort::UnownedValue {
      return index < n_outputs ? context.GetOutput(index, neuron_shape) : Ort::UnownedValue{nullptr};
    };
    if (Ort::UnownedValue v = output(1); v) run.v_out = v.GetTensorMutableData<T>();
    if (Ort::UnownedValue theta = output(2); theta) run.theta_out = theta.GetTensorMutableData<T>();
    if (Ort::UnownedValue counter = output(3); counter) run.refractory_out = counter.GetTensorMutableData<int32_t>();
    if (Ort::UnownedValue last = output(4); last) run.last_out = last.GetTensorMutableData<T>();
    if (neurons == 0) return;
    if (node_.rec) {
      const size_t samples = static_cast<size_t>(shape[1]);
      if (samples == 1) {
        run.run_sample(0);
      } else {
        context.ParallelFor(&LifRun<T>::run_sample_entry, samples, 0, &run);
      }
      return;
    }

    const size_t blocks = run.blocks();
    if (blocks == 1) {
      run.run_block(0);
      return;
    }
    // onnxruntime's intra-op pool (intra_op_num_threads); it runs inline without a pool.
    context.ParallelFor(&LifRun<T>::run_block_entry, blocks, 0, &run);
  }

  LifNode node_;
  LifConstants<T> constants_;
  T v_fill_{};
  LifFunctions<T> functions_;
};

// ----------------------------------------------------------------------------- op
template <typename T>
struct LifOp : KernelOp<LifOp<T>, LifKernel<T>> {
  static constexpr size_t kRequiredInputs = 1;
  const char* GetName() const { return "LIF"; }

  // current, v0, theta0, refractory0, last_spikes0, recurrent_weight
  size_t GetInputTypeCount() const { return 6; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : element_type<T>();
  }

  // spikes, v, theta, refractory, last_spikes
  size_t GetOutputTypeCount() const { return 5; }
  ONNXTensorElementDataType GetOutputType(size_t index) const {
    return index == 3 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : element_type<T>();
  }
};

}  // namespace hnnx
