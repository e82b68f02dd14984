// hnnx.A2S and hnnx.S2A — the Hybrid Units' numerics, free of onnxruntime types.
//
// The equations of hnnx/ops/hybrid.py in the operation order of the ONNX function bodies, so
// results equal them bit for bit when compiled without floating-point contraction
// (-ffp-contract=off). Where the function body's standard ops and numpy differ on a signed
// zero (Relu keeps −0), these follow the function body.
//
// A2S codes x [N, M] (M elements per sample) into steps first … first + count − 1:
// y [count, N, M]. Rate coding draws the counter-based words r(t, i) of hybrid.py
// `random_bits` (lowbias32), the same for every sample. S2A reduces x [T, E] (E = every
// element of a step) over time, element by element.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace hnnx {
namespace hybrid {

// ----------------------------------------------------------------------------- generator
// lowbias32 (hybrid.py `mix32`), uint32 wrapping.
inline uint32_t mix32(uint32_t z) {
  z ^= z >> 16;
  z *= 0x7FEB352Du;
  z ^= z >> 15;
  z *= 0x846CA68Bu;
  z ^= z >> 16;
  return z;
}

constexpr uint32_t kGolden = 0x9E3779B9u;  // added to the seed before hashing

// The per-step word of absolute step t: mix32(mix32(seed + golden) ^ t).
inline uint32_t step_word(uint32_t seed, uint32_t t) { return mix32(mix32(seed + kGolden) ^ t); }

// r(t, i) = mix32(step_word(t) ^ mix32(i)); `element_words[i]` = mix32(i).
inline uint32_t draw(uint32_t step, uint32_t element_word) { return mix32(step ^ element_word); }

// ----------------------------------------------------------------------------- A2S
enum class Coding { kDirect, kRate, kLearnable };
enum class Normalize { kMinMax, kClip };
enum class Converter { kIdentity, kSign, kRound };

struct A2SParams {
  Coding coding = Coding::kDirect;
  Normalize normalize = Normalize::kMinMax;
  uint32_t seed = 0;
  bool relu = false;
  Converter converter = Converter::kIdentity;
  int bits = 8;
};

// Activation, then the precision converter, as the body's Relu, Sign and Round + Clip.
inline float a2s_post(const A2SParams& p, float y) {
  if (p.relu) y = y < 0.0f ? 0.0f : y;  // Relu: −0 and NaN pass through
  if (p.converter == Converter::kSign) {
    y = y > 0.0f ? 1.0f : (y < 0.0f ? -1.0f : (y == y ? 0.0f : y));  // Sign(−0) = +0
  } else if (p.converter == Converter::kRound) {
    const float lo = -static_cast<float>(int32_t{1} << (p.bits - 1));
    const float hi = static_cast<float>((int32_t{1} << (p.bits - 1)) - 1);
    y = std::nearbyint(y);  // half to even
    y = y < lo ? lo : y;
    y = hi < y ? hi : y;
  }
  return y;
}

// The integer form (int8 or int32): Relu, Sign, and the clamp of `clamp_like`, whose bounds are
// cast to the element type first (as the body's CastLike does).
template <typename T>
T a2s_post_integer(const A2SParams& p, T y) {
  if (p.relu) y = y < T(0) ? T(0) : y;
  if (p.converter == Converter::kSign) {
    y = static_cast<T>((y > T(0)) - (y < T(0)));
  } else if (p.converter == Converter::kRound) {
    const T lo = static_cast<T>(static_cast<int32_t>(-(int64_t{1} << (p.bits - 1))));
    const T hi = static_cast<T>(static_cast<int32_t>((int64_t{1} << (p.bits - 1)) - 1));
    y = std::min(std::max(y, lo), hi);
  }
  return y;
}

// Float rate coding, min–max normalisation of one sample: p[i] from x[i], i < m.
inline void rate_probability_minmax(const float* x, size_t m, float* p) {
  if (m == 0) return;
  float low = x[0], high = x[0];
  for (size_t i = 1; i < m; ++i) {
    low = x[i] < low ? x[i] : low;
    high = high < x[i] ? x[i] : high;
  }
  const bool spread = high > low;
  const float range = spread ? high - low : 1.0f;
  for (size_t i = 0; i < m; ++i) p[i] = spread ? (x[i] - low) / range : 0.0f;
}

// Float rate coding, clipped: p = min(max(x, 0), 1) (Clip).
inline void rate_probability_clip(const float* x, size_t m, float* p) {
  for (size_t i = 0; i < m; ++i) {
    float v = x[i] < 0.0f ? 0.0f : x[i];
    p[i] = 1.0f < v ? 1.0f : v;
  }
}

// Integer rate coding of one sample: fires when (r >> 8)·(max − min) < (x − min)·2^24 (int64).
// scaled[i] = (x[i] − min)·2^24; returns max − min.
template <typename T>
int64_t rate_scaled_integer(const T* x, size_t m, int64_t* scaled) {
  if (m == 0) return 0;
  int64_t low = x[0], high = x[0];
  for (size_t i = 1; i < m; ++i) {
    low = std::min<int64_t>(low, x[i]);
    high = std::max<int64_t>(high, x[i]);
  }
  for (size_t i = 0; i < m; ++i) scaled[i] = (static_cast<int64_t>(x[i]) - low) * (int64_t{1} << 24);
  return high - low;
}

// ----------------------------------------------------------------------------- S2A
enum class Decoding { kRate, kGlobal, kLearnable };

struct S2AParams {
  Decoding decoding = Decoding::kRate;
  bool relu = false;
  size_t window = 1, kernel = 1, stride = 1, padding = 0, per_window = 1;
};

template <typename T>
inline T relu_of(T y) {
  return y < T(0) ? T(0) : y;  // Relu: −0 and NaN pass through
}

// Sums in the accumulator type: float32, or uint32 for int32 spikes (wrapping, as int32 sums do).
template <typename T>
using Sum = std::conditional_t<std::is_same_v<T, float>, float, uint32_t>;

// A sequence of steps given as rows of E elements: the first `held` rows come from the state
// buffer, the rest from x (the streaming form puts a call's steps after the unfinished window).
template <typename T>
struct Rows {
  const T* held = nullptr;  // [held_count, E]
  size_t held_count = 0;
  const T* x = nullptr;  // [T, E]
  size_t elements = 0;   // E

  const T* row(size_t p) const { return p < held_count ? held + p * elements : x + (p - held_count) * elements; }
};

// Global decoding of elements [e0, e1): the sum from +0 of `start` (the running sum held, or
// none) and then every step, one addition each; float: divided by `count`.
template <typename T>
void s2a_global(const S2AParams& params, const T* start, const T* x, size_t steps, size_t elements, size_t count,
                size_t e0, size_t e1, T* total_out, T* y) {
  using S = Sum<T>;
  for (size_t e = e0; e < e1; ++e) {
    S total = S(0);
    if (start != nullptr) total = S(total + static_cast<S>(start[e]));
    for (size_t t = 0; t < steps; ++t) total = S(total + static_cast<S>(x[t * elements + e]));
    if (total_out != nullptr) total_out[e] = static_cast<T>(total);
    T value;
    if constexpr (std::is_same_v<T, float>) {
      value = total / static_cast<float>(count);
    } else {
      value = static_cast<T>(total);
    }
    y[e] = params.relu ? relu_of(value) : value;
  }
}

// Windowed decoding (rate or learnable) of `windows` complete windows of `rows`, elements
// [e0, e1): output j·L + l. Learnable window j uses weight row `weight_row(j)` ([kernel]) and
// bias row `bias_row(j)` (or none).
template <typename T, typename WeightRow, typename BiasRow>
void s2a_windows(const S2AParams& params, const Rows<T>& rows, size_t windows, const WeightRow& weight_row,
                 const BiasRow& bias_row, size_t e0, size_t e1, T* y) {
  using S = Sum<T>;
  const size_t elements = rows.elements;
  for (size_t j = 0; j < windows; ++j) {
    const size_t base = j * params.window;
    for (size_t l = 0; l < params.per_window; ++l) {
      T* out = y + (j * params.per_window + l) * elements;
      const size_t start = l * params.stride;
      if (params.decoding == Decoding::kRate) {
        // The first step, then one addition per step (not from zero), then / kernel.
        const T* first = rows.row(base + start);
        for (size_t e = e0; e < e1; ++e) out[e] = first[e];
        for (size_t k = 1; k < params.kernel; ++k) {
          const T* step = rows.row(base + start + k);
          for (size_t e = e0; e < e1; ++e) out[e] = static_cast<T>(static_cast<S>(out[e]) + static_cast<S>(step[e]));
        }
        if constexpr (std::is_same_v<T, float>) {
          const float kernel = static_cast<float>(params.kernel);
          for (size_t e = e0; e < e1; ++e) out[e] = out[e] / kernel;
        }
      } else if constexpr (std::is_same_v<T, float>) {
        const float* w = weight_row(j);
        bool any = false;
        for (size_t k = 0; k < params.kernel; ++k) {
          const ptrdiff_t index = static_cast<ptrdiff_t>(start + k) - static_cast<ptrdiff_t>(params.padding);
          if (index < 0 || index >= static_cast<ptrdiff_t>(params.window)) continue;  // zero padding
          const float* step = rows.row(base + static_cast<size_t>(index));
          const float wk = w[k];
          if (!any) {
            for (size_t e = e0; e < e1; ++e) out[e] = wk * step[e];
          } else {
            for (size_t e = e0; e < e1; ++e) out[e] = out[e] + wk * step[e];
          }
          any = true;
        }
        if (!any) {  // the kernel lies entirely in the padding: the body's x·0
          const float* step = rows.row(base);
          for (size_t e = e0; e < e1; ++e) out[e] = step[e] * 0.0f;
        }
        if (const float* b = bias_row(j); b != nullptr) {
          const float bj = *b;
          for (size_t e = e0; e < e1; ++e) out[e] = out[e] + bj;
        }
      }
      if (params.relu) {
        for (size_t e = e0; e < e1; ++e) out[e] = relu_of(out[e]);
      }
    }
  }
}

}  // namespace hybrid
}  // namespace hnnx
