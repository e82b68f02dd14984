// hnnx.LIF — the fused multi-step kernel, free of onnxruntime types.
//
// The equations are those of hnnx/ops/lif.py (the LIF docstring and `_step_for`), in the
// same operation order, so float results equal the ONNX function body bit for bit when
// compiled without floating-point contraction (-ffp-contract=off, no -ffast-math).
//
// Layout: the current is time-major `[T, M]` (M = neurons, the product of the dims after
// axis 0) — or one step `[1, M]` read at every step (attribute `steps`) — spikes `[T, M]`. One call of `LifStepFn` runs all T steps for a block of
// n ≤ kBlock neurons whose state (membrane v, adaptive threshold θa, refractory counter)
// lives in small block-local arrays, so each input element is read once and each spike
// written once; the per-neuron inner loop is branch-free and vectorizes. A recurrent node
// (input `recurrent_weight`) couples the neurons of a sample, so it runs sample by sample
// instead, all T steps per sample, the recurrent sum event-driven over the spikes of the step
// before (`lif_recurrent_steps`); both loops call the same per-neuron step (`lif_neuron`).

#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace hnnx {

// Neurons per block: state arrays of 3 × 4 B × kBlock stay in L1, and each time step reads
// a contiguous 8 KiB run of the input (long enough for the hardware prefetcher).
constexpr std::size_t kBlock = 2048;

enum class Reset { kHard, kSoft, kSoftConstant, kNone };

// Resolved constants of one node. Parts of the equations a node does not use hold neutral
// values (alpha = 1, beta = −0.0 in float / 0 in integer, v_lower = −inf / INT32_MIN), for
// which the fused loop's extra operation is the exact identity: x·1 = x, x + (−0.0) = x,
// max(x, −inf) = x; in integer mode floor(256·x/256) = x and the state is already
// saturated. The conditional parts that change results (reset mode, adaptation,
// refractoriness) are template parameters instead.
template <typename T>
struct LifConstants {
  T threshold;
  T v_reset;
  T reset_decrement;
  T beta;
  T v_lower;
  T theta_beta;
  T theta_increment;
  float alpha = 1.0f;        // float mode: multiplicative leak
  float theta_alpha = 1.0f;  // float mode: multiplicative decay of θa
  int32_t alpha_q8 = 256;    // integer mode: round(256·alpha)
  int32_t theta_alpha_q8 = 256;
  int32_t lo = std::numeric_limits<int32_t>::min();  // integer mode: state range
  int32_t hi = std::numeric_limits<int32_t>::max();
  int32_t refractory = 0;  // steps
};

namespace detail {

template <typename T>
constexpr bool kInteger = std::is_same_v<T, int32_t>;

// ONNX Max / numpy.maximum for our operands (no NaN reaches a max in valid models).
template <typename T>
inline T max_of(T a, T b) {
  return a < b ? b : a;
}

// Integer mode: clamp to the state range (ONNX Clip(x, lo, hi) = min(max(x, lo), hi)).
template <typename T>
inline T saturate(T x, int32_t lo, int32_t hi) {
  if constexpr (kInteger<T>) {
    return std::min(std::max(x, lo), hi);
  } else {
    return x;
  }
}

// floor(x·a / 256) for 0 ≤ a ≤ 256, exact in int32: with x = 256·q + r (q = x >> 8 is the
// floor, 0 ≤ r < 256), x·a = 256·q·a + r·a, so the floor is q·a + (r·a >> 8). Neither
// product overflows (|q·a| ≤ 2^31, r·a < 2^16), unlike x·a itself, which needs int64.
inline int32_t mul_q8_floor(int32_t x, int32_t a) {
  const int32_t q = x >> 8;  // arithmetic shift: floor division by 256
  const int32_t r = x & 255;
  return q * a + ((r * a) >> 8);
}

template <typename T>
inline T scaled(T x, float factor, int32_t factor_q8) {
  if constexpr (kInteger<T>) {
    return mul_q8_floor(x, factor_q8);
  } else {
    return x * factor;
  }
}

}  // namespace detail

// One step of one neuron (the LIF docstring's steps 1–7): the current x of the step, the
// neuron's state (v, θa, refractory counter; θa / counter only used when ADAPT / REFR) updated
// in place; returns the spike. Inlined into the loops below, where `c` is a local copy.
template <typename T, Reset RESET, bool ADAPT, bool REFR>
__attribute__((always_inline)) inline T lif_neuron(const LifConstants<T>& c, T x, T& v, T& theta_a,
                                                    int32_t& counter) {
  using detail::max_of;
  using detail::saturate;
  using detail::scaled;
  const T u = saturate(x, c.lo, c.hi);
  // 1. threshold
  T theta = ADAPT ? saturate(T(c.threshold + theta_a), c.lo, c.hi) : c.threshold;
  theta = max_of(theta, c.v_lower);
  // 2. integrate, gated by the refractory counter
  const T v0 = v;
  T v1 = saturate(T(v0 + u), c.lo, c.hi);
  if constexpr (REFR) v1 = counter == 0 ? v1 : v0;
  // 3. fire
  const bool fired = v1 > theta;
  // 4. reset. Every candidate is computed for every neuron and then selected, as the op's
  // Where does; a subtraction under a branch would keep the compiler from vectorizing (it
  // may not speculate floating-point operations).
  T v2;
  if constexpr (RESET == Reset::kHard) {
    v2 = fired ? c.v_reset : v1;
  } else if constexpr (RESET == Reset::kSoft) {
    const T reduced = v1 - theta;
    v2 = saturate(fired ? reduced : v1, c.lo, c.hi);
  } else if constexpr (RESET == Reset::kSoftConstant) {
    const T reduced = v1 - c.reset_decrement;
    v2 = saturate(fired ? reduced : v1, c.lo, c.hi);
  } else {
    v2 = v1;
  }
  // 5. leak, additive leak, lower saturation (neutral constants when unused)
  T v3 = scaled(v2, c.alpha, c.alpha_q8);
  v3 = saturate(T(v3 + c.beta), c.lo, c.hi);
  v = max_of(v3, c.v_lower);
  // 6. threshold adaptation (theta_beta is always added, as in the op definition)
  if constexpr (ADAPT) {
    const T decayed = T(scaled(theta_a, c.theta_alpha, c.theta_alpha_q8) + c.theta_beta);
    const T increased = decayed + c.theta_increment;
    theta_a = saturate(fired ? increased : decayed, c.lo, c.hi);
  }
  // 7. refractory counter
  if constexpr (REFR) counter = fired ? c.refractory : std::max(counter - 1, 0);
  return fired ? T(1) : T(0);
}

// Run `steps` time steps for neurons [0, n) of a block.
//   x: the block's first neuron at step 0; step t's current is at offset t·x_step (0: the same
//   current every step, a node with `steps` > 0). spikes: likewise at offset t·stride.
//   v, theta_a, counter: block-local state, updated in place (theta_a / counter only read
//   when ADAPT / REFR).
template <typename T, Reset RESET, bool ADAPT, bool REFR>
void lif_block_steps(const LifConstants<T>& c, const T* __restrict x, std::size_t x_step, T* __restrict spikes,
                     std::size_t stride, std::size_t steps, std::size_t n, T* __restrict v, T* __restrict theta_a,
                     int32_t* __restrict counter) {
  // The constants as a local copy: the compiler cannot prove that stores to the spike array
  // leave a struct behind a reference unchanged, and would otherwise reload (and not vectorize).
  const LifConstants<T> k = c;
  for (std::size_t t = 0; t < steps; ++t) {
    const T* __restrict xt = x + t * x_step;
    T* __restrict st = spikes + t * stride;
#pragma GCC ivdep
    for (std::size_t i = 0; i < n; ++i) {
      st[i] = lif_neuron<T, RESET, ADAPT, REFR>(k, xt[i], v[i], theta_a[i], counter[i]);
    }
  }
}

// The recurrent current's accumulator: float64 for float32 neurons (the op sums the float32
// products in float64, in the order of the presynaptic index), int64 for integer neurons.
template <typename T>
using RecurrentSum = std::conditional_t<std::is_same_v<T, float>, double, int64_t>;

// Run `steps` time steps of the f neurons of one sample of a recurrent node: step t adds
// r[i] = Σ_j last[j]·w[j·f + i] to the current (hnnx/ops/lif.py `add_recurrence`).
//   x, spikes: the sample's first neuron at step 0; step t at offset t·x_step, t·stride.
//   last: the spikes of the step before (updated in place); sum: scratch of f accumulators.
// Presynaptic neurons that did not spike add ±0 terms, which leave a sum started at +0
// unchanged; they are skipped, so the cost follows the spike count (event-driven).
template <typename T, Reset RESET, bool ADAPT, bool REFR>
void lif_recurrent_steps(const LifConstants<T>& c, const T* __restrict x, std::size_t x_step,
                         T* __restrict spikes, std::size_t stride, std::size_t steps, std::size_t f, const T* __restrict w,
                         T* __restrict v, T* __restrict theta_a, int32_t* __restrict counter, T* __restrict last,
                         RecurrentSum<T>* __restrict sum) {
  using Sum = RecurrentSum<T>;
  const LifConstants<T> k = c;
  for (std::size_t t = 0; t < steps; ++t) {
    std::fill(sum, sum + f, Sum(0));
    for (std::size_t j = 0; j < f; ++j) {
      const T s = last[j];
      if (s == T(0)) continue;
      const T* __restrict row = w + j * f;
      for (std::size_t i = 0; i < f; ++i) {
        if constexpr (detail::kInteger<T>) {
          sum[i] += Sum(s) * Sum(row[i]);
        } else {
          sum[i] += Sum(s * row[i]);  // the float32 product, then summed in float64
        }
      }
    }
    const T* __restrict xt = x + t * x_step;
    T* __restrict st = spikes + t * stride;
    for (std::size_t i = 0; i < f; ++i) {
      T u;
      if constexpr (detail::kInteger<T>) {
        const auto r = static_cast<int32_t>(std::min<Sum>(std::max<Sum>(sum[i], k.lo), k.hi));
        u = detail::saturate(T(detail::saturate(xt[i], k.lo, k.hi) + r), k.lo, k.hi);
      } else {
        u = xt[i] + static_cast<float>(sum[i]);
      }
      st[i] = lif_neuron<T, RESET, ADAPT, REFR>(k, u, v[i], theta_a[i], counter[i]);
    }
    std::copy(st, st + f, last);
  }
}

template <typename T>
using LifStepFn = void (*)(const LifConstants<T>&, const T*, std::size_t, T*, std::size_t, std::size_t, std::size_t,
                           T*, T*, int32_t*);

template <typename T>
using LifRecurrentFn = void (*)(const LifConstants<T>&, const T*, std::size_t, T*, std::size_t, std::size_t,
                                std::size_t, const T*, T*, T*, int32_t*, T*, RecurrentSum<T>*);

// The pair of instantiations for one node's structure.
template <typename T>
struct LifFunctions {
  LifStepFn<T> block = nullptr;
  LifRecurrentFn<T> recurrent = nullptr;
};

namespace detail {

template <typename T, Reset RESET, bool ADAPT, bool REFR>
LifFunctions<T> functions_of() {
  return {&lif_block_steps<T, RESET, ADAPT, REFR>, &lif_recurrent_steps<T, RESET, ADAPT, REFR>};
}

template <typename T, Reset RESET>
LifFunctions<T> select_flags(bool adapt, bool refr) {
  if (adapt) return refr ? functions_of<T, RESET, true, true>() : functions_of<T, RESET, true, false>();
  return refr ? functions_of<T, RESET, false, true>() : functions_of<T, RESET, false, false>();
}

}  // namespace detail

// The instantiations for one node's structure.
template <typename T>
LifFunctions<T> select_lif_steps(Reset reset, bool adapt, bool refr) {
  switch (reset) {
    case Reset::kHard:
      return detail::select_flags<T, Reset::kHard>(adapt, refr);
    case Reset::kSoft:
      return detail::select_flags<T, Reset::kSoft>(adapt, refr);
    case Reset::kSoftConstant:
      return detail::select_flags<T, Reset::kSoftConstant>(adapt, refr);
    case Reset::kNone:
      break;
  }
  return detail::select_flags<T, Reset::kNone>(adapt, refr);
}

}  // namespace hnnx
