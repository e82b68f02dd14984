// The hnnx native custom-op library for onnxruntime.
//
// Registered with `SessionOptions.register_custom_ops_library(path)`, it adds these ops of
// domain `hnnx`, and onnxruntime then runs them instead of inlining the nodes' model-local
// function bodies (models keep their bodies and stay portable):
//
//   LIF          float32 and int32 currents (lif_op.h, lif_kernel.h)
//   A2S, S2A     every coding and decoding, float and integer, streaming ports (hybrid_ops.h,
//                hybrid_kernels.h)
//   SpikeMatMul, SpikeConv  event-driven spike-input layers, float, and int8 weights with int8
//                or int32 input → int32 (spike_layer_ops.h, spike_layers.h)
//
// Built against the C API of onnxruntime 1.21 (ORT_API_VERSION 21); newer runtimes serve
// that API version too. Compile with -ffp-contract=off and without -ffast-math
// (-fno-trapping-math is fine and lets the selects vectorize).

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <mutex>
#include <string>
#include <vector>

#include "hybrid_ops.h"
#include "lif_op.h"
#include "ort_support.h"
#include "spike_layer_ops.h"

#define HNNX_EXPORT extern "C" __attribute__((visibility("default")))

namespace hnnx {
namespace {

LifOp<float> lif_float_op;
LifOp<int32_t> lif_int32_op;
A2SOp<float> a2s_float_op;
A2SOp<int8_t> a2s_int8_op;
A2SOp<int32_t> a2s_int32_op;
S2AOp<float> s2a_float_op;
S2AOp<int32_t> s2a_int32_op;
SpikeLayerOp<float, float, SpikeMatMulKernel<float>, kSpikeMatMulName> spike_matmul_float_op;
SpikeLayerOp<int8_t, int8_t, SpikeMatMulKernel<int8_t>, kSpikeMatMulName> spike_matmul_int8_op;
SpikeLayerOp<int8_t, int32_t, SpikeMatMulKernel<int8_t, int32_t>, kSpikeMatMulName> spike_matmul_int32_op;
SpikeLayerOp<float, float, SpikeConvKernel<float>, kSpikeConvName> spike_conv_float_op;
SpikeLayerOp<int8_t, int8_t, SpikeConvKernel<int8_t>, kSpikeConvName> spike_conv_int8_op;
SpikeLayerOp<int8_t, int32_t, SpikeConvKernel<int8_t, int32_t>, kSpikeConvName> spike_conv_int32_op;

std::mutex domains_mutex;
std::vector<Ort::CustomOpDomain> domains;  // must outlive every session using them

}  // namespace
}  // namespace hnnx

// The entry point onnxruntime looks up in a custom-op library.
HNNX_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // The runtime predates the C API these kernels were compiled against; version 1 is always served.
    const OrtApi* v1 = api_base->GetApi(1);
    const std::string message = std::string("hnnx native kernels need onnxruntime C API version ") +
                                std::to_string(ORT_API_VERSION) + ", this onnxruntime is " +
                                api_base->GetVersionString();
    return v1 != nullptr ? v1->CreateStatus(ORT_NOT_IMPLEMENTED, message.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  try {
    Ort::CustomOpDomain domain{hnnx::kDomain};
    for (const OrtCustomOp* op : std::initializer_list<const OrtCustomOp*>{
             &hnnx::lif_float_op, &hnnx::lif_int32_op, &hnnx::a2s_float_op, &hnnx::a2s_int8_op, &hnnx::a2s_int32_op,
             &hnnx::s2a_float_op, &hnnx::s2a_int32_op, &hnnx::spike_matmul_float_op, &hnnx::spike_matmul_int8_op,
             &hnnx::spike_matmul_int32_op,
             &hnnx::spike_conv_float_op, &hnnx::spike_conv_int8_op, &hnnx::spike_conv_int32_op}) {
      domain.Add(op);
    }
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(hnnx::domains_mutex);
    hnnx::domains.push_back(std::move(domain));
  } catch (const std::exception& error) {
    return api->CreateStatus(ORT_FAIL, error.what());
  }
  return nullptr;
}

// The C API version the library was compiled against (for `hnnx doctor`, via ctypes).
HNNX_EXPORT int hnnx_native_api_version() { return ORT_API_VERSION; }

// How many times a LIF kernel has run in this process (via ctypes on the same library file).
HNNX_EXPORT uint64_t hnnx_native_lif_calls() {
  return hnnx::op_calls[static_cast<int>(hnnx::OpId::kLif)].load(std::memory_order_relaxed);
}

// How many times the kernel of hnnx op `op` ("LIF", "A2S", ...) has run in this process; 0 for
// an op without a kernel.
HNNX_EXPORT uint64_t hnnx_native_calls(const char* op) {
  for (int k = 0; k < static_cast<int>(hnnx::OpId::kCount); ++k) {
    if (std::string(op) == hnnx::kOpNames[k]) return hnnx::op_calls[k].load(std::memory_order_relaxed);
  }
  return 0;
}
