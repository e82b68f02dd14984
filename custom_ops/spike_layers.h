// hnnx.SpikeMatMul and hnnx.SpikeConv — event-driven spike-input layers, free of onnxruntime types.
//
// A row of spikes (a sample at a step) has few active inputs; these kernels gather them once
// (`gather_row`, `gather_masks`) and add only their weight rows, in the order of the ops'
// definitions (hnnx/ops/spike_layers.py), so float results equal the numpy reference bit for bit
// when compiled without floating-point contraction:
//
//   SpikeMatMul  y[r, m] = (Σ over active i ascending of x[r, i]·W[i, m]) + b[m]
//   SpikeConv    y[b, m, oy, ox] = (Σ over ky, kx ascending, active c ascending of
//                                   x[b, c, iy, ix]·W[m, c, ky, kx]) + b[m]
//
// sums starting at +0. Skipping inputs that are 0 is exact for finite weights (a ±0 term leaves
// a sum that is never −0 unchanged); a layer with a non-finite weight counts every input. An
// integer layer (int8 weights) reads int8 input, or int32 input as the int8 a Cast gives.
//
// Weights are laid out once (`DenseLayout`, `ConvLayout`) as column tiles of `width` outputs
// (8 to 64 lanes): tile[input][lane], so one active input adds one contiguous run of lanes. A
// dense layer sums a tile 32 KiB of weights (a block of inputs) at a time, every row adding its
// events in the block while the block is L1-resident (and the next one is prefetched); a
// convolution sums a row of output pixels under one kernel position at a time, whose weights fit
// the L1 cache. The sums of several rows (dense) or the lanes of a tile (conv) are independent
// chains, which keeps the adders busy although each sum is sequential. Integer mode keeps the
// weights int8 (a quarter of the memory traffic), widens them on load and sums exactly in uint32
// lanes, wrapping as int32 arithmetic does. The work is bound by loading weight rows: 128 bytes
// (32 float outputs) or 64 bytes (64 int8 outputs) per active input.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace hnnx {
namespace spike {

constexpr size_t kLanes = 8;

// Storage for laid-out weights: arrays of 4 MiB or more on 2 MiB pages where the system allows
// (transparent huge pages on request): a dense layer's kernel streams its weights and fetches
// events' rows across the whole tile, and 4 KiB pages cost it a TLB miss per few lines (≈ 20 %
// of its time on a 64 MiB layer). Smaller arrays are 64-byte aligned.
template <typename T>
struct WeightAllocator {
  using value_type = T;
  static constexpr size_t kHugePage = size_t{2} << 20;

  WeightAllocator() = default;
  template <typename U>
  WeightAllocator(const WeightAllocator<U>&) {}

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    const size_t align = bytes >= 2 * kHugePage ? kHugePage : 64;
    const size_t rounded = (bytes + align - 1) / align * align;
    void* p = std::aligned_alloc(align, std::max(rounded, align));
    if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHugePage) madvise(p, rounded, MADV_HUGEPAGE);  // advice only: ignored where unsupported
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }

  template <typename U>
  bool operator==(const WeightAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const WeightAllocator<U>&) const { return false; }
};
typedef float FloatLanes __attribute__((vector_size(32)));
typedef uint32_t WordLanes __attribute__((vector_size(32)));

// The accumulator of an input type: float32 for float inputs, uint32 (wrapping) for int8 inputs.
template <typename X>
using Acc = std::conditional_t<std::is_same_v<X, float>, float, uint32_t>;
// The output element: float32, or int32 for int8 inputs.
template <typename X>
using Out = std::conditional_t<std::is_same_v<X, float>, float, int32_t>;

template <typename X>
using Lanes = std::conditional_t<std::is_same_v<X, float>, FloatLanes, WordLanes>;

// Eight weights as accumulator lanes: float32 as they are, int8 sign-extended (vpmovsxbd).
template <typename X>
inline Lanes<X> load_lanes(const X* p) {
  if constexpr (std::is_same_v<X, float>) {
    FloatLanes v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else {
#if defined(__AVX2__)
    // GCC turns a generic int8 → int32 vector conversion into scalar code: say vpmovsxbd.
    const __m256i wide = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    WordLanes v;
    std::memcpy(&v, &wide, sizeof v);
    return v;
#else
    WordLanes v;
    for (size_t lane = 0; lane < kLanes; ++lane) v[lane] = static_cast<uint32_t>(static_cast<int32_t>(p[lane]));
    return v;
#endif
  }
}

// A vector of lanes from memory, and back (register values, not a copy through the stack).
template <typename V, typename T>
inline V load_vector(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V, typename T>
inline void store_vector(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// a in every lane (a − (+0) is a exactly, −0 included: a broadcast).
template <typename X>
inline Lanes<X> splat(Acc<X> a) {
  return a - Lanes<X>{};
}

// An input value as an accumulator operand (int8 sign-extended, then as uint32 bits).
template <typename X>
inline Acc<X> widen(X x) {
  if constexpr (std::is_same_v<X, float>) {
    return x;
  } else {
    return static_cast<uint32_t>(static_cast<int32_t>(x));
  }
}

// sum + bias as the output type (integer: wrapping int32 addition).
template <typename X>
inline Out<X> finish(Acc<X> sum, const Out<X>* bias, size_t m) {
  if constexpr (std::is_same_v<X, float>) {
    return bias ? sum + bias[m] : sum;
  } else {
    return static_cast<int32_t>(bias ? sum + static_cast<uint32_t>(bias[m]) : sum);
  }
}

// acc += the weight row w (NV lane vectors): as it is for a spike (UNIT), else times *value —
// the product rounded, then the sum, as the ops define. `value` is read only when not UNIT.
template <typename X, int NV, bool UNIT>
inline void add_row(Lanes<X>* acc, const X* w, const Acc<X>* value) {
  if constexpr (UNIT) {
    for (int v = 0; v < NV; ++v) acc[v] += load_lanes(w + v * kLanes);
  } else {
    const Lanes<X> factor = splat<X>(*value);
    for (int v = 0; v < NV; ++v) acc[v] += factor * load_lanes(w + v * kLanes);
  }
}

template <typename X>
inline bool active(X x) {
  return x != X(0);  // float −0 is inactive, NaN active
}

// An input element `In` as the layer's value type X: itself, or an int32 taken modulo 2⁸ as int8
// (what a Cast to int8 gives: an integer layer may read int32 spikes without that Cast).
template <typename X, typename In>
inline X input_value(In x) {
  static_assert(std::is_same_v<X, In> || (std::is_same_v<X, int8_t> && std::is_same_v<In, int32_t>));
  return static_cast<X>(x);  // int32 → int8 keeps the low 8 bits (two's complement)
}

#if defined(__AVX2__)
// Eight int32 inputs as int8 values (their low bytes): active lanes and lanes whose value is not 1.
inline __m256i low_byte_active(__m256i v) {
  const __m256i low = _mm256_and_si256(v, _mm256_set1_epi32(0xff));
  return _mm256_xor_si256(_mm256_cmpeq_epi32(low, _mm256_setzero_si256()), _mm256_set1_epi32(-1));
}
inline __m256i low_byte_not_one(__m256i v) {
  const __m256i low = _mm256_and_si256(v, _mm256_set1_epi32(0xff));
  return _mm256_xor_si256(_mm256_cmpeq_epi32(low, _mm256_set1_epi32(1)), _mm256_set1_epi32(-1));
}
#endif

constexpr size_t kChunk = 8;  // event lists are read 8 entries at a time (past their end too)

// The positions of the set bits of every byte value, ascending (8 slots), and how many there are.
struct BytePositions {
  uint8_t index[256][8] = {};
  uint8_t count[256] = {};
  constexpr BytePositions() {
    for (int byte = 0; byte < 256; ++byte) {
      for (int bit = 0; bit < 8; ++bit) {
        if (byte >> bit & 1) index[byte][count[byte]++] = static_cast<uint8_t>(bit);
      }
    }
  }
};
inline constexpr BytePositions kBytePositions{};

// ----------------------------------------------------------------------------- dense
// The active inputs of one row (a sample at a step): indices ascending, their values, and
// whether every value is 1 (spikes: the weights are added without a multiplication).
template <typename X>
struct EventRow {
  const uint32_t* index = nullptr;
  const Acc<X>* value = nullptr;
  size_t count = 0;
  bool unit = true;
  const uint32_t* start = nullptr;  // [blocks + 1]: the first event of each input block, then count
};

// Whether input x counts (active as an X, or `every`); `odd` collects whether a counted value is not 1.
template <typename X, typename In>
inline uint32_t active_input(In x, bool every, uint32_t& odd) {
  const X v = input_value<X>(x);
  const uint32_t on = static_cast<uint32_t>(active(v) | every);
  odd |= on & static_cast<uint32_t>(v != X(1));
  return on;
}

// The same for 8 consecutive inputs x[0 .. 8): bit i says whether x[i] counts.
template <typename X, typename In>
inline uint32_t active_lanes(const In* x, bool every, uint32_t& odd) {
#if defined(__AVX2__)
  if constexpr (std::is_same_v<In, float>) {
    const __m256 v = _mm256_loadu_ps(x);
    const __m256 on = every ? _mm256_castsi256_ps(_mm256_set1_epi32(-1))
                            : _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NEQ_UQ);  // NaN active, −0 not
    odd |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_and_ps(on, _mm256_cmp_ps(v, _mm256_set1_ps(1.0f), _CMP_NEQ_UQ))));
    return static_cast<uint32_t>(_mm256_movemask_ps(on));
  } else if constexpr (std::is_same_v<In, int32_t>) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i on = every ? _mm256_set1_epi32(-1) : low_byte_active(v);
    odd |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_and_si256(on, low_byte_not_one(v)))));
    return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(on)));
  } else {
    const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x));
    const __m128i on = every ? _mm_set1_epi8(-1) : _mm_xor_si128(_mm_cmpeq_epi8(v, _mm_setzero_si128()), _mm_set1_epi8(-1));
    odd |= static_cast<uint32_t>(_mm_movemask_epi8(_mm_andnot_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(1)), on))) & 0xffu;
    return static_cast<uint32_t>(_mm_movemask_epi8(on)) & 0xffu;
  }
#else
  uint32_t bits = 0;
  for (size_t i = 0; i < 8; ++i) bits |= active_input<X>(x[i], every, odd) << i;
  return bits;
#endif
}

// The inputs among x[0 .. n), n ≤ 64, that count, as a bit mask (bit i: x[i]).
template <typename X, typename In>
inline uint64_t active_mask(const In* x, size_t n, bool every, uint32_t& odd) {
  uint64_t mask = 0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) mask |= static_cast<uint64_t>(active_lanes<X>(x + i, every, odd)) << i;
  for (; i < n; ++i) mask |= static_cast<uint64_t>(active_input<X>(x[i], every, odd)) << i;
  return mask;
}

// Gather the active inputs of x[0 .. k) (every input with `every`: a non-finite weight, where
// skipping would drop 0·inf = NaN): their indices ascending into `index` (room for k + kChunk:
// the positions of a byte's set bits are written 8 at a time), the position in that list of the
// first index of every `block` inputs (a multiple of 64) into `start` (room for ⌈k/block⌉ + 1,
// the last entry the count) and, unless every active value is 1, their values into `value`
// (room for k); a row of spikes points at `ones` instead (the values a mixed group of rows reads).
template <typename X, typename In>
EventRow<X> gather_row(const In* x, size_t k, bool every, size_t block, uint32_t* index, uint32_t* start,
                       Acc<X>* value, const Acc<X>* ones) {
  size_t n = 0;
  uint32_t not_unit = 0;  // some active value is not 1
  for (size_t base = 0; base < k; base += 64) {  // one pass over x, 64 inputs at a time
    if (base % block == 0) start[base / block] = static_cast<uint32_t>(n);
    const size_t span = std::min<size_t>(64, k - base);
    const uint64_t bits = active_mask<X>(x + base, span, every, not_unit);
    for (size_t b = 0; b * 8 < span; ++b) {
      const unsigned byte = static_cast<unsigned>(bits >> (8 * b)) & 0xffu;
      const uint8_t* slots = kBytePositions.index[byte];
      const uint32_t first = static_cast<uint32_t>(base + 8 * b);
#if defined(__AVX2__)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(index + n),
                          _mm256_add_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(slots))),
                                           _mm256_set1_epi32(static_cast<int>(first))));
#else
      for (size_t j = 0; j < 8; ++j) index[n + j] = first + slots[j];
#endif
      n += kBytePositions.count[byte];
    }
  }
  start[(k + block - 1) / block] = static_cast<uint32_t>(n);
  if (not_unit == 0) return {index, ones, n, true, start};
  for (size_t j = 0; j < n; ++j) value[j] = widen(input_value<X>(x[index[j]]));
  return {index, value, n, false, start};
}

// Weights [K, M] as tiles of `width` columns: tile t holds W[i, t·width + lane] at
// [t][i][lane], zero past column M, in the input type (int8 stays int8). A tile is summed a block
// of `block` inputs at a time (32 KiB of weights: L1-resident while every row adds its events).
template <typename X>
struct DenseLayout {
  size_t inputs = 0, outputs = 0, width = 0, tiles = 0;
  size_t block = 0, blocks = 0;             // inputs per block (a multiple of 64), blocks per tile
  std::vector<X, WeightAllocator<X>> data;  // [tiles][inputs][width]
  bool finite = true;                       // float: every weight finite (zero inputs may be skipped)

  const X* tile(size_t t) const { return data.data() + t * inputs * width; }
};

constexpr size_t kBlockBytes = size_t{32} << 10;

// The tile width: 128 bytes of float weights per input (32 lanes; two cache lines per event, the
// fewest accumulators that still keep the adders busy), 64 of int8 (64 lanes), no wider than the
// outputs need.
inline size_t dense_tile_width(size_t outputs, size_t bytes) {
  size_t width = bytes == 1 ? 64 : 32;
  while (width > kLanes && width >= outputs + kLanes) width /= 2;
  return width;
}

template <typename X>
DenseLayout<X> lay_out_dense(const X* weight, size_t inputs, size_t outputs) {
  DenseLayout<X> layout;
  layout.inputs = inputs;
  layout.outputs = outputs;
  layout.width = dense_tile_width(outputs, sizeof(X));
  layout.tiles = (outputs + layout.width - 1) / layout.width;
  layout.block = std::max<size_t>(64, kBlockBytes / (layout.width * sizeof(X)) / 64 * 64);
  layout.blocks = std::max<size_t>(1, (inputs + layout.block - 1) / layout.block);
  layout.data.assign(layout.tiles * inputs * layout.width, X(0));
  for (size_t i = 0; i < inputs; ++i) {
    for (size_t m = 0; m < outputs; ++m) {
      const X w = weight[i * outputs + m];
      if constexpr (std::is_same_v<X, float>) layout.finite = layout.finite && std::isfinite(w);
      layout.data[((m / layout.width) * inputs + i) * layout.width + m % layout.width] = w;
    }
  }
  return layout;
}

// The rows of a work item between blocks: partial sums and how far each row's events are added.
template <typename X>
struct DenseScratch {
  std::vector<Acc<X>> partial;   // [rows][width]
  std::vector<uint32_t> cursor;  // [rows]
};

// The inputs below block `end` of a tile for RI rows at once (their RI·NV sums are independent
// chains, which keeps the adders busy): the rows add their next events together while every row
// has one below the end; a row with more carries them into the next step (a row's events are
// still added in ascending order). At the last step each row adds what it has left alone.
// partial: [RI][NV·8], +0 before the first step; cursor: [RI], the events added so far.
template <typename X, int NV, int RI, bool UNIT>
void accumulate_block(const X* tile, const EventRow<X>* const* rows, size_t end, bool last, Acc<X>* partial,
                      uint32_t* cursor) {
  using V = Lanes<X>;
  constexpr size_t width = NV * kLanes;
  V acc[RI][NV];
  const uint32_t* index[RI];
  const Acc<X>* value[RI];
  size_t common = SIZE_MAX;
  for (int r = 0; r < RI; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = load_vector<V>(partial + r * width + v * kLanes);
    index[r] = rows[r]->index + cursor[r];
    value[r] = rows[r]->value + cursor[r];
    common = std::min<size_t>(common, rows[r]->start[end] - cursor[r]);
  }
  for (size_t j = 0; j < common; ++j) {
    for (int r = 0; r < RI; ++r) add_row<X, NV, UNIT>(acc[r], tile + static_cast<size_t>(index[r][j]) * width, value[r] + j);
  }
  for (int r = 0; r < RI; ++r) {
    size_t added = common;
    if (last) {
      for (; cursor[r] + added < rows[r]->count; ++added) {
        add_row<X, NV, UNIT>(acc[r], tile + static_cast<size_t>(index[r][added]) * width, value[r] + added);
      }
    }
    cursor[r] += static_cast<uint32_t>(added);
    for (int v = 0; v < NV; ++v) store_vector(partial + r * width + v * kLanes, acc[r][v]);
  }
}

template <typename X, int NV, int RI>
inline void accumulate_block(const X* tile, const EventRow<X>* const* rows, size_t end, bool last, Acc<X>* partial,
                             uint32_t* cursor) {
  bool unit = true;
  for (int r = 0; r < RI; ++r) unit = unit && rows[r]->unit;
  if (unit) {
    accumulate_block<X, NV, RI, true>(tile, rows, end, last, partial, cursor);
  } else {
    accumulate_block<X, NV, RI, false>(tile, rows, end, last, partial, cursor);
  }
}

// Rows order[r0 … r1) (row numbers, grouped by similar event counts) against tile t, `step`
// blocks of inputs at a time: y[row, t·width + lane] = sum + bias. While a step is summed, the
// next one is prefetched, a few lines per group of rows.
template <typename X, int NV>
void dense_tile_rows(const DenseLayout<X>& layout, size_t t, size_t step, const EventRow<X>* rows,
                     const uint32_t* order, size_t r0, size_t r1, const Out<X>* bias, Out<X>* y) {
  using A = Acc<X>;
  constexpr int RI = 8 / NV;  // 8 independent vector sums in flight
  constexpr size_t width = NV * kLanes;
  constexpr size_t kRowBytes = width * sizeof(X);
  thread_local DenseScratch<X> scratch;
  const size_t count = r1 - r0;
  scratch.partial.assign(count * width, A{});  // +0
  scratch.cursor.assign(count, 0);
  const X* tile = layout.tile(t);
  const size_t m0 = t * width;
  const size_t lanes = std::min(width, layout.outputs - m0);
  const size_t groups = count / RI + count % RI;
  const char* bytes = reinterpret_cast<const char*>(tile);
  // The cache lines of the step that starts at block kb.
  auto lines = [&](size_t kb) {
    const size_t i0 = std::min(layout.inputs, kb * layout.block);
    return (std::min(layout.inputs - i0, step * layout.block) * kRowBytes + 63) / 64;
  };
  // Prefetch only blocks whose lines the rows' events touch about once or more (a few rows with
  // few events would fetch lines they never read).
  size_t item_events = 0;
  for (size_t r = r0; r < r1; ++r) item_events += rows[order[r]].count;
  const bool prefetch = item_events / layout.blocks >= layout.block * kRowBytes / 64;
  if (prefetch) {
    for (size_t line = 0; line < lines(0); ++line) __builtin_prefetch(bytes + line * 64, 0, 2);
  }
  const EventRow<X>* group[RI];
  for (size_t kb = 0; kb < layout.blocks; kb += step) {
    const size_t end = std::min(layout.blocks, kb + step);
    const bool last = end == layout.blocks;
    const char* next = bytes + end * layout.block * kRowBytes;
    const size_t next_lines = prefetch ? lines(end) : 0;
    const size_t per_group = (next_lines + groups - 1) / groups;
    size_t line = 0;
    auto prefetch_next = [&] {
      for (const size_t stop = std::min(next_lines, line + per_group); line < stop; ++line) {
        __builtin_prefetch(next + line * 64, 0, 2);
      }
    };
    size_t r = 0;
    for (; r + RI <= count; r += RI) {
      for (int k = 0; k < RI; ++k) group[k] = rows + order[r0 + r + k];
      accumulate_block<X, NV, RI>(tile, group, end, last, scratch.partial.data() + r * width, scratch.cursor.data() + r);
      prefetch_next();
    }
    for (; r < count; ++r) {
      group[0] = rows + order[r0 + r];
      accumulate_block<X, NV, 1>(tile, group, end, last, scratch.partial.data() + r * width, scratch.cursor.data() + r);
      prefetch_next();
    }
  }
  for (size_t r = 0; r < count; ++r) {
    const A* sum = scratch.partial.data() + r * width;
    Out<X>* out = y + static_cast<size_t>(order[r0 + r]) * layout.outputs + m0;
    for (size_t lane = 0; lane < lanes; ++lane) out[lane] = finish<X>(sum[lane], bias, m0 + lane);
  }
}

// Blocks per step: a row has at least kStepEvents events per step on average (a step loads and
// stores each row's partial sums: with few events a block is not worth its own step).
constexpr size_t kStepEvents = 16;

inline size_t dense_step(size_t events, size_t rows, size_t blocks) {
  const size_t steps = std::clamp<size_t>(events / std::max<size_t>(1, rows) / kStepEvents, 1, blocks);
  return (blocks + steps - 1) / steps;
}

template <typename X>
void dense_rows(const DenseLayout<X>& layout, size_t t, size_t step, const EventRow<X>* rows, const uint32_t* order,
                size_t r0, size_t r1, const Out<X>* bias, Out<X>* y) {
  if (r1 <= r0) return;
  switch (layout.width / kLanes) {
    case 1:
      return dense_tile_rows<X, 1>(layout, t, step, rows, order, r0, r1, bias, y);
    case 2:
      return dense_tile_rows<X, 2>(layout, t, step, rows, order, r0, r1, bias, y);
    case 4:
      return dense_tile_rows<X, 4>(layout, t, step, rows, order, r0, r1, bias, y);
    default:
      return dense_tile_rows<X, 8>(layout, t, step, rows, order, r0, r1, bias, y);
  }
}

// ----------------------------------------------------------------------------- convolution
struct ConvGeometry {
  size_t channels = 0, height = 0, width = 0;           // input C, H, W
  size_t outputs = 0, kernel_h = 0, kernel_w = 0;       // M, kh, kw
  size_t groups = 1, per_group = 0, out_per_group = 0;  // C / groups, M / groups
  size_t out_h = 0, out_w = 0;
  int64_t stride_h = 1, stride_w = 1, pad_top = 0, pad_left = 0, dilation_h = 1, dilation_w = 1;

  size_t pixels() const { return height * width; }
};

// Weights [M, C/g, kh, kw] as tiles of `width` outputs of a group: tile (g, t) holds
// W[g·Mg + t·width + lane, c, ky, kx] at [ky][kx][c][lane], zero past the group's outputs, in
// the input type.
template <typename X>
struct ConvLayout {
  size_t width = 0, tiles = 0;  // per group
  size_t rows = 0;              // weight rows per kernel position: C/g
  size_t tile_size = 0;         // kh·kw·rows·width
  std::vector<X, WeightAllocator<X>> data;
  bool finite = true;

  const X* tile(size_t g, size_t t) const { return data.data() + (g * tiles + t) * tile_size; }
};

template <typename X>
ConvLayout<X> lay_out_conv(const X* weight, const ConvGeometry& s) {
  ConvLayout<X> layout;
  // 1, 2, 4 or 8 lane vectors per output pixel: the fewest that hold the group's outputs.
  size_t vectors = 1;
  while (vectors < 8 && vectors * kLanes < s.out_per_group) vectors *= 2;
  layout.width = vectors * kLanes;
  layout.tiles = (s.out_per_group + layout.width - 1) / layout.width;
  layout.rows = s.per_group;
  layout.tile_size = s.kernel_h * s.kernel_w * layout.rows * layout.width;
  layout.data.assign(s.groups * layout.tiles * layout.tile_size, X(0));
  for (size_t m = 0; m < s.outputs; ++m) {
    const size_t g = m / s.out_per_group, local = m % s.out_per_group;
    const size_t t = local / layout.width, lane = local % layout.width;
    for (size_t c = 0; c < s.per_group; ++c) {
      for (size_t ky = 0; ky < s.kernel_h; ++ky) {
        for (size_t kx = 0; kx < s.kernel_w; ++kx) {
          const X w = weight[((m * s.per_group + c) * s.kernel_h + ky) * s.kernel_w + kx];
          if constexpr (std::is_same_v<X, float>) layout.finite = layout.finite && std::isfinite(w);
          layout.data[(g * layout.tiles + t) * layout.tile_size +
                      (((ky * s.kernel_w + kx) * layout.rows + c) * layout.width + lane)] = w;
        }
      }
    }
  }
  return layout;
}


// The active channels of every pixel of one sample x [C, H, W]: first a bit mask per pixel (one
// vectorizable pass over x, `gather_masks`), which spikes of an ungrouped layer are summed from
// directly; else (`list_pixels`) per group, ascending, as weight-row offsets (channel · `width`):
// those of pixel p in group g are row[start[p·G + g] …], `count[p·G + g]` of them, with their
// values (only when some value is not 1). The lists follow each other, and the buffers hold 8
// entries more than the last list: a list may be read 8 entries at a time, past its end. The
// masks' set bits are listed 8 channels at a time through a table of the set bits of every byte
// (no branch on the number of events).
template <typename X>
struct PixelEvents {
  std::vector<uint64_t> masks;  // [H·W][words]: bit c % 64 of word c / 64
  std::vector<uint32_t> start, count;
  std::vector<uint32_t> row;
  std::vector<Acc<X>> value;
  bool unit = true;  // every active value is 1
};

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "a pixel's mask bytes are written in little-endian order");

// Transpose an 8×8 bit matrix held in a word, byte r = row r (bit c = column c): afterwards
// byte c holds column c (three rounds of swapping the off-diagonal blocks).
inline uint64_t transpose_bits8(uint64_t m) {
  uint64_t t = (m ^ (m >> 7)) & 0x00AA00AA00AA00AAull;
  m ^= t ^ (t << 7);
  t = (m ^ (m >> 14)) & 0x0000CCCC0000CCCCull;
  m ^= t ^ (t << 14);
  t = (m ^ (m >> 28)) & 0x00000000F0F0F0F0ull;
  return m ^ t ^ (t << 28);
}

// The activity of 8 pixels (p … p + 7) of up to 8 channel planes, 8 × 8 bits: byte j, bit i =
// x[j][p + i] counts (active, or `every`); `odd` collects counted values that are not 1.
template <typename X, typename In>
inline uint64_t active_block(const In* const* planes, size_t count, size_t p, bool every, uint32_t& odd) {
  uint64_t rows = 0;
  for (size_t j = 0; j < count; ++j) rows |= static_cast<uint64_t>(active_lanes<X>(planes[j] + p, every, odd)) << (8 * j);
  return rows;
}

// Every pixel's mask of active channels (counted: active, or all with `every`), and whether every
// counted value is 1 (`unit`).
template <typename X, typename In>
void gather_masks(const In* x, const ConvGeometry& s, bool every, PixelEvents<X>& events) {
  const size_t pixels = s.pixels(), words = (s.channels + 63) / 64;
  events.masks.assign(pixels * words, 0);
  uint32_t not_unit = 0;  // some active value is not 1
  // Eight channels and eight pixels at a time: a bit mask per plane row of 8 pixels (one compare
  // and movemask), transposed into one byte of channels per pixel, stored into its mask word.
  uint8_t* mask_bytes = reinterpret_cast<uint8_t*>(events.masks.data());  // byte c / 8 of pixel p: p·8·words + c / 8
  for (size_t c0 = 0; c0 < s.channels; c0 += 8) {
    const size_t count = std::min<size_t>(8, s.channels - c0);
    const In* planes[8];
    for (size_t j = 0; j < count; ++j) planes[j] = x + (c0 + j) * pixels;
    size_t p = 0;
    for (; p + 8 <= pixels; p += 8) {
      const uint64_t columns = transpose_bits8(active_block<X>(planes, count, p, every, not_unit));
      for (size_t i = 0; i < 8; ++i) mask_bytes[(p + i) * 8 * words + c0 / 8] = static_cast<uint8_t>(columns >> (8 * i));
    }
    for (; p < pixels; ++p) {  // the last < 8 pixels
      uint32_t byte = 0;
      for (size_t j = 0; j < count; ++j) byte |= active_input<X>(planes[j][p], every, not_unit) << j;
      mask_bytes[p * 8 * words + c0 / 8] = static_cast<uint8_t>(byte);
    }
  }
  events.unit = not_unit == 0;
}

// The masks' channels listed per pixel and group, with their values unless `unit`.
template <typename X, typename In>
void list_pixels(const In* x, const ConvGeometry& s, size_t width, PixelEvents<X>& events) {
  const size_t pixels = s.pixels(), cells = pixels * s.groups, words = (s.channels + 63) / 64;
  const bool unit = events.unit;
  events.start.resize(cells);
  events.count.resize(cells);
  const size_t room = s.channels * pixels + 64 + kChunk;  // every channel, a byte's 8 slots, a read past the end
  if (events.row.size() < room) events.row.resize(room);
  if (!unit && events.value.size() < room) events.value.resize(room);
  uint32_t* row = events.row.data();
  Acc<X>* value = events.value.data();
  size_t n = 0;
  for (size_t p = 0; p < pixels; ++p) {
    const uint64_t* mask = events.masks.data() + p * words;
    for (size_t g = 0; g < s.groups; ++g) {
      const size_t first = n, c0 = g * s.per_group, c1 = c0 + s.per_group;
      if (unit && s.groups == 1) {
        // 8 channels at a time: the byte's set bits from the table, 8 slots written, n advanced by their number.
        for (size_t w = 0; w < words; ++w) {
          const uint64_t bits = mask[w];
          for (size_t k = 0; k < 8 && w * 64 + k * 8 < c1; ++k) {
            const unsigned byte = static_cast<unsigned>(bits >> (8 * k)) & 0xffu;
            const uint8_t* slots = kBytePositions.index[byte];
            const uint32_t base = static_cast<uint32_t>(w * 64 + k * 8);
#if defined(__AVX2__)
            const __m256i channels = _mm256_add_epi32(
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(slots))),
                _mm256_set1_epi32(static_cast<int>(base)));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(row + n),
                                _mm256_mullo_epi32(channels, _mm256_set1_epi32(static_cast<int>(width))));
#else
            for (size_t j = 0; j < 8; ++j) row[n + j] = (base + slots[j]) * static_cast<uint32_t>(width);
#endif
            n += kBytePositions.count[byte];
          }
        }
      } else {
        for (size_t w = c0 / 64; w * 64 < c1; ++w) {
          uint64_t bits = mask[w];
          if (w * 64 < c0) bits &= ~uint64_t{0} << (c0 - w * 64);
          if (c1 < w * 64 + 64) bits &= ~(~uint64_t{0} << (c1 - w * 64));
          while (bits) {
            const size_t c = w * 64 + static_cast<size_t>(__builtin_ctzll(bits));
            bits &= bits - 1;
            row[n] = static_cast<uint32_t>((c - c0) * width);
            if (!unit) value[n] = widen(input_value<X>(x[c * pixels + p]));
            ++n;
          }
        }
      }
      events.start[p * s.groups + g] = static_cast<uint32_t>(first);
      events.count[p * s.groups + g] = static_cast<uint32_t>(n - first);
    }
  }
}

// A pixel of spikes: whether any of its channels is active (its mask words, `words` of them).
inline bool any_active(const uint64_t* mask, size_t words) {
  uint64_t any = 0;
  for (size_t w = 0; w < words; ++w) any |= mask[w];
  return any != 0;
}

// acc += the weight rows (`width` lanes apart from `position`) of a pixel's active channels,
// ascending: the set bits of its mask words, taken lowest first.
template <typename X, int NV>
inline void add_mask_rows(Lanes<X>* acc, const X* position, const uint64_t* mask, size_t words, size_t width) {
  for (size_t w = 0; w < words; ++w) {
    const X* rows = position + w * 64 * width;
    for (uint64_t bits = mask[w]; bits != 0; bits &= bits - 1) {
      add_row<X, NV, true>(acc, rows + static_cast<size_t>(__builtin_ctzll(bits)) * width, nullptr);
    }
  }
}

// Transpose 8 vectors of 8 lanes in place: v[k][l] ↔ v[l][k].
template <typename V>
inline void transpose8(V* v) {
  typedef int32_t Index __attribute__((vector_size(32)));
  V t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = __builtin_shuffle(v[k], v[k + 1], Index{0, 8, 1, 9, 4, 12, 5, 13});
    t[k + 1] = __builtin_shuffle(v[k], v[k + 1], Index{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int k = 0; k < 8; k += 4) {
    for (int h = 0; h < 2; ++h) {
      u[k + 2 * h] = __builtin_shuffle(t[k + h], t[k + h + 2], Index{0, 1, 8, 9, 4, 5, 12, 13});
      u[k + 2 * h + 1] = __builtin_shuffle(t[k + h], t[k + h + 2], Index{2, 3, 10, 11, 6, 7, 14, 15});
    }
  }
  for (int k = 0; k < 4; ++k) {
    v[k] = __builtin_shuffle(u[k], u[k + 4], Index{0, 1, 2, 3, 8, 9, 10, 11});
    v[k + 4] = __builtin_shuffle(u[k], u[k + 4], Index{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// What an input row or column reaches: a kernel offset and an output index, as element offsets
// into a tile's weights and into the partial sums.
struct Reach {
  size_t weights, sums;
};

// A thread's working memory for one sample of a convolution, kept from call to call (no
// allocation in steady state, one thread-local lookup per sample).
template <typename X>
struct ConvScratch {
  PixelEvents<X> events;
  std::vector<Acc<X>> sums;           // partial sums: a row of output pixels, or a whole sample
  std::vector<Out<X>> transposed;     // write_row's 8 channels of a row
  std::vector<uint32_t> row_first, col_first;  // conv_sample_scatter's reach of every input row, column
  std::vector<Reach> row_reach, col_reach;
};

// Write a row of output pixels, row[ox][lane] (the sums), channel-major: y[m0 + lane][ox] =
// sum + bias, for lanes < `lanes`. Eight channels at a time are transposed (8×8 blocks) into a
// small buffer, then stored one channel's row after the other: each output line is written
// whole at once (the channels' rows lie a plane apart, on the same cache sets). `stream`:
// with non-temporal stores where the row covers whole aligned lines (an output larger than the
// caches is read back from memory anyway; this skips reading every line before writing it).
template <typename X, size_t WIDTH>
void write_row(const Acc<X>* row, size_t out_w, size_t lanes, size_t m0, size_t plane, const Out<X>* bias,
               bool stream, std::vector<Out<X>>& buffer, Out<X>* y) {
  using V = Lanes<X>;
  const size_t stride = (out_w + 15) / 16 * 16;  // buffer: [8][stride]
  if (buffer.size() < kLanes * stride) buffer.resize(kLanes * stride);
  const bool whole_lines = stream && out_w * sizeof(Out<X>) % 64 == 0;
  for (size_t v = 0; v * kLanes < lanes; ++v) {
    const size_t m = m0 + v * kLanes, count = std::min(kLanes, lanes - v * kLanes);
    V add[kLanes];
    for (size_t l = 0; l < kLanes; ++l) add[l] = splat<X>(bias && l < count ? static_cast<Acc<X>>(bias[m + l]) : Acc<X>(0));
    size_t ox = 0;
    for (; ox + 8 <= out_w; ox += 8) {
      V block[8];
      for (int k = 0; k < 8; ++k) block[k] = load_vector<V>(row + (ox + k) * WIDTH + v * kLanes);
      transpose8(block);  // block[l] = lane v·8 + l of pixels ox … ox + 7
      for (size_t l = 0; l < kLanes; ++l) store_vector(buffer.data() + l * stride + ox, bias ? block[l] + add[l] : block[l]);
    }
    for (; ox < out_w; ++ox) {  // the last < 8 pixels
      for (size_t l = 0; l < count; ++l) buffer[l * stride + ox] = finish<X>(row[ox * WIDTH + v * kLanes + l], bias, m + l);
    }
    for (size_t l = 0; l < count; ++l) {
      Out<X>* to = y + (m + l) * plane;
      const Out<X>* from = buffer.data() + l * stride;
#if defined(__AVX2__)
      if (whole_lines && reinterpret_cast<uintptr_t>(to) % 64 == 0) {
        for (size_t k = 0; k < out_w; k += 8) {
          _mm256_stream_si256(reinterpret_cast<__m256i*>(to + k), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from + k)));
        }
        continue;
      }
#endif
      std::memcpy(to, from, out_w * sizeof(Out<X>));
    }
  }
}

// One sample: y [M, OH, OW] from its pixel events, a row of output pixels at a time. The row's
// partial sums (out_w × `width` lanes, L1-resident) take the kernel positions in turn, ascending;
// under each position every output pixel of the row adds, in NV lane vectors held in registers,
// the weight rows of the active channels of the input pixel it reads, ascending — the op's order
// (positions, then channels), sums starting at +0 (a stored float32 sum reloads as it is). One
// position's weights (C/g rows of `width` lanes) serve the whole row from the L1 cache, where an
// output pixel at a time would fetch every position's rows from L2 again for each pixel. The row
// is then written channel-major. MASKS: spikes, ungrouped — the active channels come from each
// pixel's mask bits (lowest first), not from lists.
template <typename X, int NV, bool UNIT, bool MASKS = false>
void conv_sample_rows(const ConvLayout<X>& layout, const ConvGeometry& s, ConvScratch<X>& scratch,
                      const Out<X>* bias, bool stream, Out<X>* y) {
  using A = Acc<X>;
  using V = Lanes<X>;
  constexpr size_t width = NV * kLanes;
  const PixelEvents<X>& events = scratch.events;
  std::vector<A>& row = scratch.sums;
  row.resize(s.out_w * width);
  const size_t plane = s.out_h * s.out_w, position_size = layout.rows * width, words = (s.channels + 63) / 64;
  for (size_t g = 0; g < s.groups; ++g) {
    for (size_t t = 0; t < layout.tiles; ++t) {
      const X* tile = layout.tile(g, t);
      const size_t m0 = g * s.out_per_group + t * width;
      const size_t lanes = std::min(width, s.out_per_group - t * width);
      for (size_t oy = 0; oy < s.out_h; ++oy) {
        std::fill(row.begin(), row.end(), A(0));  // +0
        for (size_t ky = 0; ky < s.kernel_h; ++ky) {
          const int64_t iy = static_cast<int64_t>(oy) * s.stride_h - s.pad_top + static_cast<int64_t>(ky) * s.dilation_h;
          if (iy < 0 || iy >= static_cast<int64_t>(s.height)) continue;
          const size_t input_row = static_cast<size_t>(iy) * s.width;
          for (size_t kx = 0; kx < s.kernel_w; ++kx) {
            const X* position = tile + (ky * s.kernel_w + kx) * position_size;
            const int64_t shift = static_cast<int64_t>(kx) * s.dilation_w - s.pad_left;
            for (size_t ox = 0; ox < s.out_w; ++ox) {
              const int64_t ix = static_cast<int64_t>(ox) * s.stride_w + shift;
              if (ix < 0 || ix >= static_cast<int64_t>(s.width)) continue;
              const size_t cell = (input_row + static_cast<size_t>(ix)) * s.groups + g;
              A* out = row.data() + ox * width;
              V acc[NV];  // vector loads into registers (a copy of the array goes through the stack, and stalls)
              if constexpr (MASKS) {
                const uint64_t* mask = events.masks.data() + cell * words;
                if (!any_active(mask, words)) continue;
                for (int v = 0; v < NV; ++v) acc[v] = load_vector<V>(out + v * kLanes);
                add_mask_rows<X, NV>(acc, position, mask, words, width);
              } else {
                const size_t count = events.count[cell];
                if (count == 0) continue;
                const uint32_t* list = events.row.data() + events.start[cell];
                const A* values = UNIT ? nullptr : events.value.data() + events.start[cell];  // (none for spikes)
                for (int v = 0; v < NV; ++v) acc[v] = load_vector<V>(out + v * kLanes);
                for (size_t e = 0; e < count; ++e) add_row<X, NV, UNIT>(acc, position + list[e], UNIT ? nullptr : values + e);
              }
              for (int v = 0; v < NV; ++v) store_vector(out + v * kLanes, acc[v]);
            }
          }
        }
        write_row<X, width>(row.data(), s.out_w, lanes, m0, plane, bias, stream, scratch.transposed, y + oy * s.out_w);
      }
    }
  }
}

// Outputs at least this large are written with non-temporal stores: more than a core's share of
// a last-level cache, they are read back from memory by the next op in any case.
constexpr size_t kStreamingBytes = size_t{16} << 20;

// The partial sums of a whole sample fit the L1 cache up to this size: small layers are then
// summed input pixel by input pixel (conv_sample_scatter), which touches only the events.
constexpr size_t kScatterSumsBytes = size_t{32} << 10;

// One sample, input-driven: every active input pixel adds, for each kernel position that reaches
// an output pixel, the weight rows of its active channels to that output pixel's NV lane
// vectors in `sums` (the whole sample's partial sums, L1-resident). Input pixels come in
// row-major order, so an output pixel receives its positions (ky, kx) ascending — the input row
// and column grow with them — and each position's channels ascending: the op's order, sums
// starting at +0 (storing a float32 sum leaves it as it is). Work follows the events only; the
// sums are then written channel-major, a row of output pixels at a time. MASKS as for
// conv_sample_rows.
template <typename X, int NV, bool UNIT, bool MASKS = false>
void conv_sample_scatter(const ConvLayout<X>& layout, const ConvGeometry& s, ConvScratch<X>& scratch,
                         const Out<X>* bias, bool stream, Out<X>* y) {
  using A = Acc<X>;
  using V = Lanes<X>;
  constexpr size_t width = NV * kLanes;
  const PixelEvents<X>& events = scratch.events;
  const size_t plane = s.out_h * s.out_w, position_size = layout.rows * width, words = (s.channels + 63) / 64;
  std::vector<A>& sums = scratch.sums;
  sums.resize(plane * width);
  // What each input row and column reaches, in kernel order; a kernel step and an output step
  // are `kernel_step` weights and `output_step` sums apart.
  auto reaches = [](size_t inputs, size_t kernel, size_t outputs, int64_t stride, int64_t pad, int64_t dilation,
                    size_t kernel_step, size_t output_step, std::vector<uint32_t>& first, std::vector<Reach>& pairs) {
    first.assign(inputs + 1, 0);
    pairs.clear();
    for (size_t i = 0; i < inputs; ++i) {
      first[i] = static_cast<uint32_t>(pairs.size());
      for (size_t k = 0; k < kernel; ++k) {
        const int64_t scaled = static_cast<int64_t>(i) + pad - static_cast<int64_t>(k) * dilation;
        if (scaled < 0 || scaled % stride != 0 || static_cast<size_t>(scaled / stride) >= outputs) continue;
        pairs.push_back({k * kernel_step, static_cast<size_t>(scaled / stride) * output_step});
      }
    }
    first[inputs] = static_cast<uint32_t>(pairs.size());
  };
  std::vector<uint32_t>&row_first = scratch.row_first, &col_first = scratch.col_first;
  std::vector<Reach>&row_reach = scratch.row_reach, &col_reach = scratch.col_reach;
  reaches(s.height, s.kernel_h, s.out_h, s.stride_h, s.pad_top, s.dilation_h, s.kernel_w * position_size,
          s.out_w * width, row_first, row_reach);
  reaches(s.width, s.kernel_w, s.out_w, s.stride_w, s.pad_left, s.dilation_w, position_size, width, col_first,
          col_reach);
  const uint32_t *rows_first = row_first.data(), *cols_first = col_first.data();
  const Reach *rows_reach = row_reach.data(), *cols_reach = col_reach.data();
  for (size_t g = 0; g < s.groups; ++g) {
    for (size_t t = 0; t < layout.tiles; ++t) {
      const X* tile = layout.tile(g, t);
      const size_t m0 = g * s.out_per_group + t * width;
      const size_t lanes = std::min(width, s.out_per_group - t * width);
      std::fill(sums.begin(), sums.end(), A(0));  // +0
      for (size_t iy = 0; iy < s.height; ++iy) {
        for (size_t ix = 0; ix < s.width; ++ix) {
          const size_t cell = (iy * s.width + ix) * s.groups + g;
          size_t count = 0;
          const uint64_t* mask = nullptr;
          const uint32_t* list = nullptr;
          const A* values = nullptr;
          if constexpr (MASKS) {
            mask = events.masks.data() + cell * words;
            if (!any_active(mask, words)) continue;
          } else {
            count = events.count[cell];
            if (count == 0) continue;
            list = events.row.data() + events.start[cell];
            values = UNIT ? nullptr : events.value.data() + events.start[cell];  // (none for spikes)
          }
          for (uint32_t r = rows_first[iy]; r < rows_first[iy + 1]; ++r) {
            const Reach vertical = rows_reach[r];
            for (uint32_t c = cols_first[ix]; c < cols_first[ix + 1]; ++c) {
              const Reach horizontal = cols_reach[c];
              const X* position = tile + vertical.weights + horizontal.weights;
              A* out = sums.data() + vertical.sums + horizontal.sums;
              V acc[NV];  // vector loads into registers (a copy of the array goes through the stack, and stalls)
              for (int v = 0; v < NV; ++v) acc[v] = load_vector<V>(out + v * kLanes);
              if constexpr (MASKS) {
                add_mask_rows<X, NV>(acc, position, mask, words, width);
              } else {
                for (size_t e = 0; e < count; ++e) add_row<X, NV, UNIT>(acc, position + list[e], UNIT ? nullptr : values + e);
              }
              for (int v = 0; v < NV; ++v) store_vector(out + v * kLanes, acc[v]);
            }
          }
        }
      }
      for (size_t oy = 0; oy < s.out_h; ++oy) {
        write_row<X, width>(sums.data() + oy * s.out_w * width, s.out_w, lanes, m0, plane, bias, stream,
                           scratch.transposed, y + oy * s.out_w);
      }
    }
  }
}

// One sample's sums in NV lane vectors, once its channel masks are gathered: input-driven
// (conv_sample_scatter) when the whole sample's partial sums fit the L1 cache, else a row of
// output pixels at a time (conv_sample_rows). Spikes of an ungrouped layer are added straight
// from each pixel's mask bits; other inputs (values, groups) from the listed events.
template <typename X, typename In, int NV>
void conv_sample_sums(const ConvLayout<X>& layout, const ConvGeometry& s, ConvScratch<X>& scratch, const In* x,
                      const Out<X>* bias, bool stream, Out<X>* y) {
  const bool scatter = s.out_h * s.out_w * layout.width * sizeof(Acc<X>) <= kScatterSumsBytes;
  if (scratch.events.unit && s.groups == 1) {
    scatter ? conv_sample_scatter<X, NV, true, true>(layout, s, scratch, bias, stream, y)
            : conv_sample_rows<X, NV, true, true>(layout, s, scratch, bias, stream, y);
    return;
  }
  list_pixels<X>(x, s, layout.width, scratch.events);
  if (scratch.events.unit) {
    scatter ? conv_sample_scatter<X, NV, true>(layout, s, scratch, bias, stream, y)
            : conv_sample_rows<X, NV, true>(layout, s, scratch, bias, stream, y);
  } else {
    scatter ? conv_sample_scatter<X, NV, false>(layout, s, scratch, bias, stream, y)
            : conv_sample_rows<X, NV, false>(layout, s, scratch, bias, stream, y);
  }
}

// One sample x [C, H, W] → y [M, OH, OW]. `stream`: write y past the caches (a large output).
template <typename X, typename In>
void conv_sample(const ConvLayout<X>& layout, const ConvGeometry& s, const In* x, bool every, const Out<X>* bias,
                 bool stream, Out<X>* y) {
  thread_local ConvScratch<X> scratch;
  gather_masks<X>(x, s, every, scratch.events);
  switch (layout.width / kLanes) {
    case 1:
      conv_sample_sums<X, In, 1>(layout, s, scratch, x, bias, stream, y);
      break;
    case 2:
      conv_sample_sums<X, In, 2>(layout, s, scratch, x, bias, stream, y);
      break;
    case 4:
      conv_sample_sums<X, In, 4>(layout, s, scratch, x, bias, stream, y);
      break;
    default:
      conv_sample_sums<X, In, 8>(layout, s, scratch, x, bias, stream, y);
  }
#if defined(__AVX2__)
  if (stream) _mm_sfence();  // non-temporal stores are weakly ordered: visible before the work item ends
#endif
}

}  // namespace spike
}  // namespace hnnx
