// What every hnnx kernel needs from onnxruntime: attributes, one-line errors naming the node,
// broadcast initial values, scalar inputs, run counters and the status wrapper of ComputeV2.
//
// Included by hnnx_ops.cc after <onnxruntime_cxx_api.h> (ORT_API_MANUAL_INIT).

#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace hnnx {

constexpr const char* kDomain = "hnnx";
constexpr int64_t kExactAttributeLimit = int64_t{1} << 24;  // integer constants travel in float32

// ----------------------------------------------------------------------------- run counters
// How many times each kernel ran in this process: lets tests and `hnnx doctor` prove that
// onnxruntime ran a kernel rather than the node's function body.
enum class OpId : int { kLif, kA2S, kS2A, kSpikeMatMul, kSpikeConv, kCount };
inline const char* const kOpNames[] = {"LIF", "A2S", "S2A", "SpikeMatMul", "SpikeConv"};
inline std::atomic<uint64_t> op_calls[static_cast<int>(OpId::kCount)] = {};

inline void count_call(OpId op) { op_calls[static_cast<int>(op)].fetch_add(1, std::memory_order_relaxed); }

// ----------------------------------------------------------------------------- errors
// A node's label for error messages: "hnnx.<op> node '<name>': <message>" (one line).
struct NodeLabel {
  std::string op;
  std::string name;

  [[noreturn]] void fail(const std::string& message) const {
    throw std::runtime_error("hnnx." + op + " node '" + name + "': " + message);
  }
};

// ComputeV2's contract: errors become an OrtStatus, never an exception across the C API.
template <typename F>
OrtStatusPtr guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const Ort::Exception& error) {
    return Ort::GetApi().CreateStatus(error.GetOrtErrorCode(), error.what());
  } catch (const std::exception& error) {
    return Ort::GetApi().CreateStatus(ORT_RUNTIME_EXCEPTION, error.what());
  }
}

// ----------------------------------------------------------------------------- attributes
struct OptionalFloat {
  bool present = false;
  float value = 0.0f;
};

inline OptionalFloat read_float(const OrtKernelInfo* info, const char* name) {
  OptionalFloat out;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_float(info, name, &out.value);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    return {};
  }
  out.present = true;
  return out;
}

inline float float_attr(const OrtKernelInfo* info, const char* name, float fallback) {
  OptionalFloat got = read_float(info, name);
  return got.present ? got.value : fallback;
}

inline int64_t int_attr(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t value = 0;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_int64(info, name, &value);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    return fallback;
  }
  return value;
}

inline std::string string_attr(const OrtKernelInfo* info, const char* name, const std::string& fallback) {
  size_t size = 0;
  OrtStatus* status = Ort::GetApi().KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (status != nullptr) {
    Ort::GetApi().ReleaseStatus(status);
    return fallback;
  }
  std::string value(size, '\0');
  Ort::ThrowOnError(Ort::GetApi().KernelInfoGetAttribute_string(info, name, value.data(), &size));
  value.resize(size > 0 ? size - 1 : 0);  // drop the terminating NUL
  return value;
}

// A string attribute that must be one of `choices` (the declaration's choices).
inline std::string choice_attr(const NodeLabel& node, const OrtKernelInfo* info, const char* name,
                               const std::string& fallback, std::initializer_list<const char*> choices) {
  const std::string value = string_attr(info, name, fallback);
  std::string listed;
  for (const char* choice : choices) {
    if (value == choice) return value;
    listed += (listed.empty() ? "" : ", ") + std::string(choice);
  }
  node.fail(std::string("unknown ") + name + " '" + value + "' (" + listed + ")");
}

// Which ports of the node are connected (an optional input left empty is absent).
struct Ports {
  std::vector<bool> inputs;
  size_t outputs = 0;

  bool input(size_t index) const { return index < inputs.size() && inputs[index]; }
};

inline Ports ports_of(const OrtKernelInfo* info) {
  Ort::ConstKernelInfo kernel_info(info);
  Ports ports;
  const size_t count = kernel_info.GetInputCount();
  for (size_t i = 0; i < count; ++i) ports.inputs.push_back(!kernel_info.GetInputName(i).empty());
  ports.outputs = kernel_info.GetOutputCount();
  return ports;
}

inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

inline size_t element_count(const std::vector<int64_t>& shape, size_t from = 0) {
  size_t count = 1;
  for (size_t i = from; i < shape.size(); ++i) count *= static_cast<size_t>(shape[i]);
  return count;
}

// ----------------------------------------------------------------------------- inputs
// The connected input `index` of the call, or a null value.
inline Ort::ConstValue optional_input(const Ort::KernelContext& context, size_t index) {
  return index < context.GetInputCount() ? context.GetInput(index) : Ort::ConstValue{nullptr};
}

// An int64 input holding one value (a scalar, or any shape of one element).
inline int64_t scalar_int64(const NodeLabel& node, const char* port, const Ort::ConstValue& value) {
  const std::vector<int64_t> shape = value.GetTensorTypeAndShapeInfo().GetShape();
  if (element_count(shape) != 1) node.fail(std::string(port) + " must hold one int64, got shape " + shape_text(shape));
  return value.GetTensorData<int64_t>()[0];
}

// An input broadcast to `target` (ONNX Expand semantics, after which the element count must
// be the target's), read in runs of consecutive flat indices.
template <typename S>
class Broadcast {
 public:
  Broadcast() = default;

  // `what` names the target in errors, e.g. "the neuron shape".
  Broadcast(const NodeLabel& node, const char* port, const Ort::ConstValue& value, const std::vector<int64_t>& target,
            const char* what)
      : data_(value.GetTensorData<S>()) {
    const std::vector<int64_t> shape = value.GetTensorTypeAndShapeInfo().GetShape();
    const size_t rank = target.size();
    auto bad = [&]() {
      node.fail(std::string("input ") + port + " of shape " + shape_text(shape) + " does not broadcast to " + what +
                " " + shape_text(target));
    };
    if (shape.size() > rank) {
      for (size_t i = 0; i + rank < shape.size(); ++i) {
        if (shape[i] != 1) bad();
      }
    }
    // Row-major strides of `value` aligned to the trailing target dims; 0 where broadcast.
    strides_.assign(rank, 0);
    dims_ = target;
    int64_t stride = 1;
    for (size_t k = 0; k < std::min(rank, shape.size()); ++k) {
      const int64_t dim = shape[shape.size() - 1 - k];
      const int64_t want = target[rank - 1 - k];
      if (dim != want && dim != 1) bad();
      strides_[rank - 1 - k] = dim == 1 ? 0 : stride;
      stride *= dim;
    }
    total_ = 1;
    for (int64_t d : target) total_ *= d;
    contiguous_ = stride == total_;
    scalar_ = stride == 1;
  }

  bool present() const { return data_ != nullptr; }

  // out[i] = value at flat target index (first + i), i < n.
  void read(size_t first, size_t n, S* out) const {
    if (scalar_) {
      std::fill(out, out + n, data_[0]);
    } else if (contiguous_) {
      std::memcpy(out, data_ + first, n * sizeof(S));
    } else {
      read_strided(first, n, out);
    }
  }

 private:
  void read_strided(size_t first, size_t n, S* out) const {
    const size_t rank = dims_.size();
    std::vector<int64_t> index(rank, 0);  // once per run, not per element
    size_t rest = first;
    int64_t offset = 0;
    for (size_t k = rank; k-- > 0;) {
      index[k] = static_cast<int64_t>(rest % static_cast<size_t>(dims_[k]));
      rest /= static_cast<size_t>(dims_[k]);
      offset += index[k] * strides_[k];
    }
    for (size_t i = 0; i < n; ++i) {
      out[i] = data_[offset];
      for (size_t k = rank; k-- > 0;) {  // odometer increment
        offset += strides_[k];
        if (++index[k] < dims_[k]) break;
        offset -= strides_[k] * dims_[k];
        index[k] = 0;
      }
    }
  }

  const S* data_ = nullptr;
  std::vector<int64_t> dims_, strides_;
  int64_t total_ = 0;
  bool contiguous_ = false, scalar_ = false;
};

// ----------------------------------------------------------------------------- memory
// An uninitialised, 64-byte aligned array: pages nobody writes are never touched.
template <typename T>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(size_t n) { resize(n); }

  void resize(size_t n) {
    if (n <= capacity_) return;
    const size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    T* fresh = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (fresh == nullptr) throw std::bad_alloc();
    data_.reset(fresh);
    capacity_ = n;
  }

  T* data() { return data_.get(); }
  const T* data() const { return data_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  size_t capacity_ = 0;
};

// ----------------------------------------------------------------------------- ops
template <typename T>
constexpr ONNXTensorElementDataType element_type() {
  if constexpr (std::is_same_v<T, float>) return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if constexpr (std::is_same_v<T, int8_t>) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8;
  if constexpr (std::is_same_v<T, int32_t>) return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
}

// What every hnnx custom op shares: its kernel is created from the node (a bad node is one
// status line naming it), it runs on the CPU provider, inputs [0, Derived::kRequiredInputs) and
// output 0 are required, the rest optional. Derived names the op and types its ports.
template <typename Derived, typename Kernel>
struct KernelOp : Ort::CustomOpBase<Derived, Kernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new Kernel(info);
      return nullptr;
    } catch (const std::exception& error) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, error.what());
    }
  }

  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < Derived::kRequiredInputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t index) const {
    return index == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }
};

// The label of the node a kernel is created for.
inline NodeLabel label_of(const OrtKernelInfo* info, const char* op) {
  return NodeLabel{op, Ort::ConstKernelInfo(info).GetNodeName()};
}

// Run fn(self, i) for i < total on onnxruntime's intra-op pool (inline without a pool).
template <typename Self>
void parallel_for(const Ort::KernelContext& context, size_t total, const Self* self,
                  void (*fn)(void*, size_t)) {
  if (total == 0) return;
  if (total == 1) {
    fn(const_cast<Self*>(self), 0);
    return;
  }
  context.ParallelFor(fn, total, 0, const_cast<Self*>(self));
}

}  // namespace hnnx
