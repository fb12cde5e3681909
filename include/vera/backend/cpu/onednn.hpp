// SPDX-License-Identifier: Apache-2.0
// oneDNN GEMM provider: matmul primitives created once per shape and layout, then only executed.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <type_traits>
#include <unordered_map>

#include <Eigen/Core>
#include <dnnl.hpp>

namespace vera::detail::cpu::onednn {

namespace detail {

/// A matrix operand as oneDNN sees it: extents, element strides, element type, address.
struct operand {
  std::int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 0;
  dnnl::memory::data_type type = dnnl::memory::data_type::undef;
  void* data = nullptr;
};

template <class Scalar>
constexpr dnnl::memory::data_type data_type_of() {
  if constexpr (std::is_same_v<Scalar, float>) return dnnl::memory::data_type::f32;
  if constexpr (std::is_same_v<Scalar, Eigen::bfloat16>) return dnnl::memory::data_type::bf16;
  return dnnl::memory::data_type::undef;
}

/// Fills `out` when `e` is plain strided memory of a type oneDNN's CPU matmul takes (float32,
/// bfloat16), including transposed views; lazy expressions and other types are refused.
template <class E>
bool describe(const E& e, operand& out) {
  using X = std::decay_t<E>;
  constexpr auto type = data_type_of<typename X::Scalar>();
  if constexpr (type == dnnl::memory::data_type::undef ||
                !(Eigen::internal::traits<X>::Flags & Eigen::DirectAccessBit)) {
    return false;
  } else {
    out.rows = e.rows();
    out.cols = e.cols();
    const std::int64_t inner = e.innerStride();
    const std::int64_t outer = e.outerStride();
    out.row_stride = X::IsRowMajor ? outer : inner;
    out.col_stride = X::IsRowMajor ? inner : outer;
    // The stride of an extent of 1 is never used, and Eigen reports it as 1 for a single row of a
    // column-major matrix; oneDNN's kernels reject such layouts, so give it the dense value.
    if (out.rows == 1) out.row_stride = std::max<std::int64_t>(1, out.cols * out.col_stride);
    if (out.cols == 1) out.col_stride = std::max<std::int64_t>(1, out.rows * out.row_stride);
    out.type = type;
    // oneDNN's descriptors take pointers to mutable memory; sources are only read.
    out.data = const_cast<void*>(static_cast<const void*>(e.data()));
    return true;
  }
}

/// Everything a primitive depends on: extents, strides, types and whether it accumulates.
struct key {
  std::int64_t m, n, k;
  std::int64_t strides[6];
  int types[3];
  bool accumulate;
  bool operator==(const key& o) const noexcept {
    for (int i = 0; i < 6; ++i) {
      if (strides[i] != o.strides[i]) return false;
    }
    return m == o.m && n == o.n && k == o.k && types[0] == o.types[0] && types[1] == o.types[1] &&
           types[2] == o.types[2] && accumulate == o.accumulate;
  }
};

struct key_hash {
  std::size_t operator()(const key& k) const noexcept {
    std::size_t h = std::hash<std::int64_t>{}(k.m);
    const auto mix = [&h](std::int64_t v) { h ^= std::hash<std::int64_t>{}(v) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); };
    mix(k.n);
    mix(k.k);
    for (const std::int64_t s : k.strides) mix(s);
    for (const int t : k.types) mix(t);
    mix(k.accumulate ? 1 : 0);
    return h;
  }
};

/// One cached product: the primitive, memory objects whose addresses are set per call, the
/// argument map and a scratchpad owned here, so executing allocates nothing.
struct entry {
  bool supported = false;
  dnnl::matmul primitive;
  dnnl::memory src, weights, dst, scratchpad;
  std::unordered_map<int, dnnl::memory> args;
  std::string kernel;
};

inline const dnnl::engine& cpu_engine() {
  static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

inline std::set<std::string>& kernels_seen() {
  static thread_local std::set<std::string> seen;
  return seen;
}

inline dnnl::memory::desc describe_memory(std::int64_t rows, std::int64_t cols, std::int64_t row_stride,
                                          std::int64_t col_stride, dnnl::memory::data_type type) {
  return dnnl::memory::desc({rows, cols}, type, {row_stride, col_stride});
}

inline entry make_entry(const operand& a, const operand& b, const operand& c, bool accumulate) {
  entry made;
  try {
    const auto& engine = cpu_engine();
    const auto a_md = describe_memory(a.rows, a.cols, a.row_stride, a.col_stride, a.type);
    const auto b_md = describe_memory(b.rows, b.cols, b.row_stride, b.col_stride, b.type);
    const auto c_md = describe_memory(c.rows, c.cols, c.row_stride, c.col_stride, c.type);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.f);
      attr.set_post_ops(ops);
    }
#if DNNL_VERSION_MAJOR >= 3
    const dnnl::matmul::primitive_desc pd(engine, a_md, b_md, c_md, attr);
#else
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, engine);
#endif
    made.primitive = dnnl::matmul(pd);
    made.src = dnnl::memory(a_md, engine, DNNL_MEMORY_NONE);
    made.weights = dnnl::memory(b_md, engine, DNNL_MEMORY_NONE);
    made.dst = dnnl::memory(c_md, engine, DNNL_MEMORY_NONE);
    made.scratchpad = dnnl::memory(pd.scratchpad_desc(), engine);
    made.args = {{DNNL_ARG_SRC, made.src},
                 {DNNL_ARG_WEIGHTS, made.weights},
                 {DNNL_ARG_DST, made.dst},
                 {DNNL_ARG_SCRATCHPAD, made.scratchpad}};
    made.kernel = pd.impl_info_str();
    // oneDNN's reference implementation is a plain loop, hundreds of times slower than Eigen's
    // GEMM (e.g. bfloat16 on a CPU without AVX-512 BF16): leave those products to Eigen.
    made.supported = made.kernel.rfind("ref", 0) != 0;
  } catch (const dnnl::error&) {
    made.supported = false;  // remembered, so an unsupported layout is not retried every call
  }
  return made;
}

}  // namespace detail

/// \brief The oneDNN matmul implementations this thread has created so far, e.g.
///        "brg:avx512_core_amx_bf16" (for benchmarks and reports).
inline std::set<std::string> kernels_used() { return detail::kernels_seen(); }

/// \brief c = a b (or c += a b) in oneDNN when all three are plain strided memory of types its
///        matmul takes; returns false, having touched nothing, when the caller must compute it.
template <class C, class A, class B>
bool try_gemm(C& c, const A& a, const B& b, bool accumulate) {
  detail::operand ad, bd, cd;
  if (!detail::describe(a, ad) || !detail::describe(b, bd) || !detail::describe(c, cd)) return false;
  // Empty products, and those with a zero stride (oneDNN wants strictly described memory), are
  // left to Eigen, which handles them without a primitive.
  if (ad.rows == 0 || ad.cols == 0 || bd.cols == 0) return false;
  for (const std::int64_t s : {ad.row_stride, ad.col_stride, bd.row_stride, bd.col_stride, cd.row_stride, cd.col_stride}) {
    if (s <= 0) return false;
  }
  if (cd.cols > 1 && cd.row_stride < cd.col_stride) {
    // A column-major C: oneDNN's fast kernels want the destination's rows contiguous, so compute
    // C^T = B^T A^T, the same products with the operands' roles and strides swapped.
    const auto transposed = [](const detail::operand& o) {
      detail::operand t = o;
      t.rows = o.cols;
      t.cols = o.rows;
      t.row_stride = o.col_stride;
      t.col_stride = o.row_stride;
      return t;
    };
    const detail::operand at = transposed(bd), bt = transposed(ad);
    ad = at;
    bd = bt;
    cd = transposed(cd);
  }
  const detail::key k{ad.rows,
                      bd.cols,
                      ad.cols,
                      {ad.row_stride, ad.col_stride, bd.row_stride, bd.col_stride, cd.row_stride, cd.col_stride},
                      {static_cast<int>(ad.type), static_cast<int>(bd.type), static_cast<int>(cd.type)},
                      accumulate};
  static thread_local std::unordered_map<detail::key, detail::entry, detail::key_hash> cache;
  auto found = cache.find(k);
  if (found == cache.end()) {
    found = cache.emplace(k, detail::make_entry(ad, bd, cd, accumulate)).first;
    if (found->second.supported) detail::kernels_seen().insert(found->second.kernel);
  }
  detail::entry& e = found->second;
  if (!e.supported) return false;
  static thread_local dnnl::stream stream(detail::cpu_engine());
  e.src.set_data_handle(ad.data);
  e.weights.set_data_handle(bd.data);
  e.dst.set_data_handle(cd.data);
  try {
    e.primitive.execute(stream, e.args);
    stream.wait();
  } catch (const dnnl::error&) {
    // A layout oneDNN accepted at creation but refuses to run: checked before anything is
    // written, so Eigen computes this product (and every later one of this layout) instead.
    e.supported = false;
    return false;
  }
  return true;
}

}  // namespace vera::detail::cpu::onednn
