#include "tandem/backend/cpu/reference/mla.hpp"

#include <Eigen/Core>
#include <vector>

#include "tandem/backend/cpu/reference/linear.hpp"
#include "tandem/backend/thread_pool.hpp"

namespace tandem {
namespace {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Strided = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;
using ConstStrided = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;

}  // namespace

void mla_absorb_query(ThreadPool& pool, const LinearWeight& kv_b, const MlaShape& s, const float* q,
                      int64_t tokens, float* q_latent) {
  const int64_t q_head = s.nope + s.rope;
  pool.parallel_for(s.heads, [&](int64_t begin, int64_t end, int worker) {
    for (int64_t h = begin; h < end; ++h) {
      float* w = pool.scratch(worker, 0, static_cast<size_t>(s.nope * s.kv_lora));
      const int64_t first = h * (s.nope + s.v);
      dequantize_weight_rows(kv_b, first, first + s.nope, w);
      Eigen::Map<const RowMajor> wk(w, s.nope, s.kv_lora);
      ConstStrided qn(q + h * q_head, tokens, s.nope, Eigen::OuterStride<>(s.heads * q_head));
      Strided ql(q_latent + h * s.kv_lora, tokens, s.kv_lora, Eigen::OuterStride<>(s.heads * s.kv_lora));
      ql.noalias() = qn * wk;
    }
  });
}

void mla_expand_values(ThreadPool& pool, const LinearWeight& kv_b, const MlaShape& s, const float* attended,
                       int64_t tokens, float* out) {
  pool.parallel_for(s.heads, [&](int64_t begin, int64_t end, int worker) {
    for (int64_t h = begin; h < end; ++h) {
      float* w = pool.scratch(worker, 0, static_cast<size_t>(s.v * s.kv_lora));
      const int64_t first = h * (s.nope + s.v) + s.nope;
      dequantize_weight_rows(kv_b, first, first + s.v, w);
      Eigen::Map<const RowMajor> wv(w, s.v, s.kv_lora);
      ConstStrided a(attended + h * s.kv_lora, tokens, s.kv_lora, Eigen::OuterStride<>(s.heads * s.kv_lora));
      Strided o(out + h * s.v, tokens, s.v, Eigen::OuterStride<>(s.heads * s.v));
      o.noalias() = a * wv.transpose();
    }
  });
}

}  // namespace tandem
