// Absorbed MLA decode attention on the tensor cores (cuda/src/mla_tensor_cores.cu) against the
// float32 CUDA-core split kernel it stands beside (TANDEM_CUDA_MLA_TC=0) and against the definition
// evaluated in float64 on the host over the cache's own values. Runs on the GPU machine; skips,
// saying so, without a GPU.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_test_support.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/kv/kv_type.hpp"

using namespace tandem;
using test::have_gpu;
using test::random_floats;
using test::ScopedEnv;

namespace {

// A latent cache as the pool lays one layer out (one plane, 16-token blocks, block ids shuffled so a
// sequence's blocks are not contiguous), f16 or bf16 rows of `width` values (latent, then rope key);
// token t is its own sequence at position contexts[t] − 1. `values` keeps every sequence's rows as the
// cache holds them, decoded to float, for the host's float64 evaluation.
struct LatentCache : test::DevicePagedCache {
  std::vector<std::vector<float>> values;  // [token][position · width + i]
};

LatentCache latent_cache(KvType type, const std::vector<int64_t>& contexts, int64_t width, uint32_t seed) {
  LatentCache c;
  const int64_t bt = 16;
  int64_t stride = 1;
  for (int64_t n : contexts) stride = std::max(stride, (n + bt - 1) / bt);
  const auto tokens = static_cast<int64_t>(contexts.size()), blocks = tokens * stride;
  c.kv.type = type;
  c.kv.block_tokens = bt;
  c.kv.row_bytes = width * 2;
  c.kv.block_stride = bt * c.kv.row_bytes;
  c.kv.rope_values = 0;
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(blocks));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), rng);
  // Every row of every block holds values (rows past a context too: the kernels must not use them).
  const auto raw = random_floats(static_cast<size_t>(blocks * bt * width), seed + 1);
  std::vector<uint16_t> bits(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) bits[i] = type == KvType::bf16 ? f32_to_bf16(raw[i]) : f32_to_f16(raw[i]);
  c.values.resize(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t n = contexts[static_cast<size_t>(t)];
    auto& v = c.values[static_cast<size_t>(t)];
    v.resize(static_cast<size_t>(n * width));
    for (int64_t p = 0; p < n; ++p) {
      const int64_t block = ids[static_cast<size_t>(t * stride + p / bt)];
      const uint16_t* row = bits.data() + (block * bt + p % bt) * width;
      for (int64_t i = 0; i < width; ++i)
        v[static_cast<size_t>(p * width + i)] = type == KvType::bf16 ? bf16_to_f32(row[i]) : f16_to_f32(row[i]);
    }
  }
  c.upload(bits.data(), bits.size() * 2, contexts, ids, stride);
  return c;
}

// out[t, h] = Σ_p softmax_p(scale · (q_latent[t, h]·latent[p] + q_rope[t, h]·rope[p])) · latent[p], in float64.
std::vector<double> reference(const LatentCache& c, const std::vector<float>& ql, const std::vector<float>& qr,
                              int64_t heads, int64_t kv_lora, int64_t rope, float scale) {
  const int64_t width = kv_lora + rope, tokens = c.batch.tokens;
  std::vector<double> out(static_cast<size_t>(tokens * heads * kv_lora));
  for (int64_t t = 0; t < tokens; ++t) {
    const auto& v = c.values[static_cast<size_t>(t)];
    const int64_t n = static_cast<int64_t>(v.size()) / width;
    std::vector<double> w(static_cast<size_t>(n)), acc(static_cast<size_t>(kv_lora));
    for (int64_t h = 0; h < heads; ++h) {
      const float* ql_h = ql.data() + (t * heads + h) * kv_lora;
      const float* qr_h = qr.data() + (t * heads + h) * rope;
      double m = -INFINITY;
      for (int64_t p = 0; p < n; ++p) {
        const float* row = v.data() + p * width;
        double d = 0;
        for (int64_t i = 0; i < kv_lora; ++i) d += static_cast<double>(ql_h[i]) * row[i];
        for (int64_t i = 0; i < rope; ++i) d += static_cast<double>(qr_h[i]) * row[kv_lora + i];
        w[static_cast<size_t>(p)] = d * scale;
        m = std::max(m, w[static_cast<size_t>(p)]);
      }
      double l = 0;
      for (auto& x : w) l += (x = std::exp(x - m));
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t p = 0; p < n; ++p) {
        const float* row = v.data() + p * width;
        const double wp = w[static_cast<size_t>(p)];
        for (int64_t i = 0; i < kv_lora; ++i) acc[static_cast<size_t>(i)] += wp * row[i];
      }
      for (int64_t i = 0; i < kv_lora; ++i)
        out[static_cast<size_t>((t * heads + h) * kv_lora + i)] = acc[static_cast<size_t>(i)] / l;
    }
  }
  return out;
}

// The largest |a − b| and the largest |b| (infinite error where a value is not finite).
struct Deviation {
  double max_err = 0, max_ref = 0;
};
template <typename T>
Deviation deviation(const std::vector<float>& a, const std::vector<T>& b) {
  Deviation d;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (!std::isfinite(a[i])) d.max_err = INFINITY;
    d.max_err = std::max(d.max_err, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
    d.max_ref = std::max(d.max_ref, std::abs(static_cast<double>(b[i])));
  }
  if (a.size() != b.size()) d.max_err = INFINITY;
  return d;
}

struct LatentShape {
  int64_t heads, kv_lora, rope;
};

// mla_attention's output for the batch (through the public entry point, so with whichever kernel the
// environment and the case select), on a fresh stream and scratch.
std::vector<float> attend(const LatentCache& c, const std::vector<float>& ql, const std::vector<float>& qr,
                          const LatentShape& s, float scale) {
  const int64_t scratch_floats = std::max<int64_t>(1, cuda::mla_attention_scratch_floats(c.batch, s.heads, s.kv_lora));
  cuda::Stream stream(0);
  cuda::DeviceBuffer dl(0, ql.size() * 4), dr(0, std::max<size_t>(qr.size(), 1) * 4),
      scratch(0, static_cast<size_t>(scratch_floats) * 4), out(0, ql.size() * 4);
  dl.upload(ql.data(), ql.size() * 4);
  if (!qr.empty()) dr.upload(qr.data(), qr.size() * 4);
  std::vector<float> nan(ql.size(), NAN);  // every value must be written
  out.upload(nan.data(), nan.size() * 4);
  cuda::mla_attention(stream, c.kv, c.batch, static_cast<const float*>(dl.data()), static_cast<const float*>(dr.data()),
                      s.heads, s.kv_lora, s.rope, scale, static_cast<float*>(scratch.data()),
                      static_cast<float*>(out.data()));
  stream.synchronize();
  std::vector<float> host(ql.size());
  out.download(host.data(), host.size() * 4);
  return host;
}

}  // namespace

// DeepSeek-V3 (128 heads) and V2-Lite (16) over 512 + 64, a smaller latent (32 heads over 128 + 64), a
// partly filled head group over 256 + 32 (rows not a multiple of 64 values: padded shared rows), and
// the trained fixture's 4 heads of 256 + 32; contexts of one position, a partial tile, one whole tile,
// several splits and many (4,100: ~65 splits for a 64-head group), and three tokens of three sequences
// at different positions in one batch (each its own context and block table).
TEST_CASE("cuda MLA decode on the tensor cores equals the float64 definition and the float32 kernel",
          "[cuda][attention][mla]") {
  if (!have_gpu()) return;
  const std::vector<std::vector<int64_t>> batches = {{1}, {17}, {64}, {300}, {4100}, {17, 300, 4100}, {65, 1, 130}};
  for (KvType type : {KvType::f16, KvType::bf16})
    for (LatentShape s : {LatentShape{128, 512, 64}, LatentShape{16, 512, 64}, LatentShape{32, 128, 64}, LatentShape{20, 256, 32}, LatentShape{4, 256, 32}})
      for (const auto& contexts : batches) {
        const LatentCache c = latent_cache(type, contexts, s.kv_lora + s.rope, 31);
        const auto tokens = static_cast<int64_t>(contexts.size());
        const auto ql = random_floats(static_cast<size_t>(tokens * s.heads * s.kv_lora), 32);
        const auto qr = random_floats(static_cast<size_t>(tokens * s.heads * s.rope), 33);
        // DeepSeek's 1/√(128 + 64) at 512 + 64 (scores of a few units: a softmax neither flat nor one-hot)
        const float scale = 1.f / std::sqrt(static_cast<float>(s.kv_lora / 4 + s.rope));
        INFO(kv_type_name(type) << " heads " << s.heads << " latent " << s.kv_lora << " + " << s.rope << " tokens "
                                << tokens << " contexts " << contexts.front() << (tokens > 1 ? "…" : "") << " scratch "
                                << cuda::mla_attention_scratch_floats(c.batch, s.heads, s.kv_lora) << " floats");
        REQUIRE(cuda::mla_attention_tensor_cores(c.batch, s.heads, s.kv_lora, s.rope, c.kv));
        const std::vector<float> tensor_cores = attend(c, ql, qr, s, scale);
        std::vector<float> cuda_cores;
        {
          const ScopedEnv off("TANDEM_CUDA_MLA_TC", "0");
          REQUIRE_FALSE(cuda::mla_attention_tensor_cores(c.batch, s.heads, s.kv_lora, s.rope, c.kv));
          cuda_cores = attend(c, ql, qr, s, scale);
        }
        const auto expected = reference(c, ql, qr, s.heads, s.kv_lora, s.rope, scale);
        const Deviation tc = deviation(tensor_cores, expected), cc = deviation(cuda_cores, expected),
                        between = deviation(tensor_cores, cuda_cores);
        INFO("tensor cores: max err " << tc.max_err << ", float32 kernel: max err " << cc.max_err
                                      << ", between them: " << between.max_err << ", of " << tc.max_ref);
        CHECK(tc.max_ref > 0);
        // The harness: the float32 kernel is the definition within float rounding.
        CHECK(cc.max_err <= 2e-5 * cc.max_ref + 1e-6);
        // Q and each probability are rounded once to the cache's type before their products (K and V
        // are exact; sums in float32): f16 keeps 11 significant bits (2⁻¹¹ ≈ 4.9e-4 relative a rounding),
        // bf16 8 (2⁻⁸ ≈ 3.9e-3, eight times f16's). A score's error is the sum of ~width rounded products
        // with random signs and the output's a weighted sum of the rows, so both stay within a few
        // unit roundings of the output's largest magnitude: a host emulation of the kernel's roundings
        // at these shapes gave ≤ 4e-4 (f16) and ≤ 2.8e-3 (bf16); the bounds leave ~4× and ~3× margin.
        const double tolerance = type == KvType::f16 ? 2e-3 : 8e-3;
        CHECK(tc.max_err <= tolerance * tc.max_ref);
        CHECK(between.max_err <= tolerance * tc.max_ref);
      }
}

TEST_CASE("cuda MLA decode takes the tensor cores only where they apply", "[cuda][attention][mla]") {
  if (!have_gpu()) return;
  const LatentCache c = latent_cache(KvType::f16, {100}, 512 + 64, 41);
  CHECK(cuda::mla_attention_tensor_cores(c.batch, 128, 512, 64, c.kv));
  CHECK(cuda::mla_attention_tensor_cores(c.batch, 16, 512, 64, c.kv));
  CHECK(cuda::mla_attention_tensor_cores(c.batch, 1, 512, 64, c.kv));
  CHECK(cuda::mla_attention_tensor_cores(c.batch, 200, 512, 64, c.kv));  // 4 groups of 64, the last partly filled
  {
    const ScopedEnv off("TANDEM_CUDA_MLA_TC", "0");
    CHECK_FALSE(cuda::mla_attention_tensor_cores(c.batch, 128, 512, 64, c.kv));
  }
  {
    const ScopedEnv on("TANDEM_CUDA_MLA_TC", "1");
    CHECK(cuda::mla_attention_tensor_cores(c.batch, 128, 512, 64, c.kv));
  }
  cuda::PagedKv kv = c.kv;
  for (KvType other : {KvType::f32, KvType::fp8, KvType::int8}) {
    kv.type = other;
    INFO(kv_type_name(other));
    CHECK_FALSE(cuda::mla_attention_tensor_cores(c.batch, 128, 512, 64, kv));  // the float32 kernel reads these
  }
  kv = c.kv;
  CHECK_FALSE(cuda::mla_attention_tensor_cores(c.batch, 4, 64, 16, kv));    // the tiny fixtures' latent of 64
  CHECK_FALSE(cuda::mla_attention_tensor_cores(c.batch, 16, 384, 64, kv));  // not 128, 256 or 512
  CHECK_FALSE(cuda::mla_attention_tensor_cores(c.batch, 16, 512, 8, kv));   // rope not a multiple of 16
  CHECK_FALSE(cuda::mla_attention_tensor_cores(c.batch, 128, 512, 192, kv));  // 64 heads of 704: past 227 KiB
  kv.row_bytes = (512 + 64) * 2 + 8;  // rows not 16-byte aligned
  kv.block_stride = kv.block_tokens * kv.row_bytes;
  CHECK_FALSE(cuda::mla_attention_tensor_cores(c.batch, 128, 512, 64, kv));
}
