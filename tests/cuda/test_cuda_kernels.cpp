// CUDA kernels against the CPU reference (formats' dequantize_row + double accumulation).
// Runs on the GPU machine; skips, saying so, where there is no GPU.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cuda_test_support.hpp"
#include "support/fixtures.hpp"
#include "tandem/backend/cuda_backend.hpp"
#include "tandem/cuda/blas_gemm.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/kv/kv_type.hpp"

using namespace tandem;

namespace {

bool have_gpu() {
  if (cuda::device_count() > 0) return true;
  WARN("skipped: no CUDA device on this machine");
  return false;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// How far `got` is from `ref`: the largest absolute difference, the largest |ref| and the mean
// absolute difference.
struct Deviation {
  double max_err = 0, max_ref = 0, mean_err = 0;
};
Deviation deviation(const std::vector<float>& got, const std::vector<float>& ref) {
  Deviation d;
  for (size_t i = 0; i < got.size() && i < ref.size(); ++i) {
    const double e = std::abs(static_cast<double>(got[i]) - ref[i]);
    d.max_err = std::max(d.max_err, e);
    d.mean_err += e;
    d.max_ref = std::max(d.max_ref, static_cast<double>(std::abs(ref[i])));
  }
  if (!got.empty()) d.mean_err /= static_cast<double>(got.size());
  if (got.size() != ref.size()) d.max_err = INFINITY;
  return d;
}

// y = x · Wᵀ on the CPU in double, W dequantised row by row from its stored bytes.
std::vector<double> reference_linear(const TensorView& w, const std::vector<float>& x, int64_t rows) {
  const int64_t out = w.shape[0], in = w.shape.back();
  std::vector<double> y(static_cast<size_t>(rows * out));
  std::vector<float> wrow(static_cast<size_t>(in));
  for (int64_t o = 0; o < out; ++o) {
    dequantize_row(w.dtype, w.row_ptr(o), wrow.data(), in);
    for (int64_t r = 0; r < rows; ++r) {
      double acc = 0;
      for (int64_t i = 0; i < in; ++i) acc += double(wrow[size_t(i)]) * x[size_t(r * in + i)];
      y[size_t(r * out + o)] = acc;
    }
  }
  return y;
}

void check_linear(const TensorView& w, int64_t rows) {
  const int64_t out = w.shape[0], in = w.shape.back();
  const auto x = random_floats(size_t(rows * in), 7);
  const auto expected = reference_linear(w, x, rows);

  cuda::Stream stream(0);
  cuda::DeviceBuffer dw(0, w.nbytes), dx(0, x.size() * 4), dy(0, size_t(rows * out) * 4);
  dw.upload(w.data, w.nbytes);
  dx.upload(x.data(), x.size() * 4);
  cuda::linear(stream, w.dtype, dw.data(), out, in, static_cast<const float*>(dx.data()), rows,
               static_cast<float*>(dy.data()));
  stream.synchronize();
  std::vector<float> y(size_t(rows * out));
  dy.download(y.data(), y.size() * 4);

  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    max_err = std::max(max_err, std::abs(y[i] - expected[i]));
    max_ref = std::max(max_ref, std::abs(expected[i]));
  }
  INFO(dtype_name(w.dtype) << " [" << out << ", " << in << "] rows " << rows << ": max err " << max_err
                           << " of max " << max_ref);
  CHECK(max_err <= 1e-4 * max_ref + 1e-5);
}

}  // namespace

TEST_CASE("the planner's list of CUDA weight types is the kernels' dispatch", "[cuda]") {
  // Host code on both sides: no GPU needed. The placement planner decides with the list whether the
  // automatic hybrid defaults can put a tensor on the GPU.
  for (int t = 0; t <= static_cast<int>(DType::iq4_xs); ++t) {
    INFO(dtype_name(static_cast<DType>(t)));
    CHECK(cuda_weight_type_supported(static_cast<DType>(t)) == cuda::weight_type_supported(static_cast<DType>(t)));
  }
}

TEST_CASE("cuda linear matches the CPU reference for q8_0 weights from a real GGUF", "[cuda]") {
  if (!have_gpu()) return;
  const auto gguf = GgufFile::open(test::data_dir() + "/tiny-qwen3moe/qwen3moe-q8_0.gguf");
  int checked = 0;
  for (const auto& t : gguf.tensors().entries()) {
    if (t.view.shape.rank != 2 || (t.view.dtype != DType::q8_0 && t.view.dtype != DType::f32)) continue;
    for (int64_t rows : {1, 3, 9}) check_linear(t.view, rows);
    if (++checked == 6) break;
  }
  CHECK(checked > 0);
}

TEST_CASE("cuda linear matches the CPU reference for f16 and bf16 weights", "[cuda]") {
  if (!have_gpu()) return;
  const int64_t out = 96, in = 160;
  const auto w32 = random_floats(size_t(out * in), 3);
  for (DType t : {DType::f16, DType::bf16}) {
    std::vector<uint16_t> bits(w32.size());
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = t == DType::f16 ? f32_to_f16(w32[i]) : f32_to_bf16(w32[i]);
    TensorView w;
    w.dtype = t;
    w.shape = Shape{out, in};
    w.data = bits.data();
    w.nbytes = bits.size() * 2;
    for (int64_t rows : {1, 8, 17}) check_linear(w, rows);
  }
}

TEST_CASE("cuda cuBLAS GEMM over bf16-rounded operands equals the bf16 tensor-core tiles", "[cuda]") {
  if (!have_gpu()) return;
  cuda::BlasGemm blas(0);
  if (!blas.available()) {
    WARN("skipped: cuBLAS is not loadable here (" << blas.why_not() << ")");
    return;
  }
  const int64_t out = 384, in = 1024, rows = 300;
  const auto x = random_floats(static_cast<size_t>(rows * in), 32);
  cuda::Stream stream(0);
  cuda::DeviceBuffer dx(0, x.size() * 4), tiles(0, static_cast<size_t>(rows * out) * 4),
      gemm(0, static_cast<size_t>(rows * out) * 4), w16(0, static_cast<size_t>(out * in) * 2),
      x16(0, x.size() * 2);
  dx.upload(x.data(), x.size() * 4);
  for (DType t : {DType::q4_k, DType::q6_k, DType::q8_0, DType::iq4_xs, DType::bf16, DType::f8_e4m3}) {
    const test::OwnedWeight o = test::random_weight(t, out, in, 31);
    cuda::DeviceBuffer bytes(0, o.bytes.size()), scales(0, std::max<size_t>(4, o.scales.size() * 4));
    bytes.upload(o.bytes.data(), o.bytes.size());
    if (!o.scales.empty()) scales.upload(o.scales.data(), o.scales.size() * 4);
    cuda::DeviceWeight w{t, bytes.data(), out, in, o.scales.empty() ? nullptr : static_cast<const float*>(scales.data()),
                         nullptr};
    const auto* xp = static_cast<const float*>(dx.data());
    cuda::linear(stream, w, xp, rows, static_cast<float*>(tiles.data()), cuda::TensorCoreMath::bf16);
    cuda::dequantize_bf16(stream, w, w16.data());
    cuda::round_bf16(stream, xp, rows * in, x16.data());
    blas.gemm_bf16(stream, w16.data(), x16.data(), rows, out, in, static_cast<float*>(gemm.data()));
    stream.synchronize();
    std::vector<float> a(static_cast<size_t>(rows * out)), b(a.size());
    gemm.download(a.data(), a.size() * 4);
    tiles.download(b.data(), b.size() * 4);
    const auto [max_err, max_ref, mean_err] = deviation(a, b);
    INFO(dtype_name(t) << ": max err " << max_err << " of " << max_ref);
    CHECK(max_ref > 0);
    // The same bf16 operands; only the float32 accumulation order differs.
    CHECK(max_err <= 1e-4 * max_ref);
  }
}

TEST_CASE("cuda cuBLAS float32 GEMM equals a double reference to float32 rounding", "[cuda]") {
  // F32 weights of prefill batches (the routers' matrices) go through it: plain float32 arithmetic
  // (no TF32), so a few ulps of the largest product sum from the exact result.
  if (!have_gpu()) return;
  cuda::BlasGemm blas(0);
  if (!blas.available()) {
    WARN("skipped: cuBLAS is not loadable here (" << blas.why_not() << ")");
    return;
  }
  for (auto [rows, out, in] : {std::array<int64_t, 3>{300, 128, 2048}, std::array<int64_t, 3>{257, 67, 96}}) {
    const auto w = random_floats(static_cast<size_t>(out * in), 51), x = random_floats(static_cast<size_t>(rows * in), 52);
    cuda::Stream stream(0);
    cuda::DeviceBuffer dw(0, w.size() * 4), dx(0, x.size() * 4), dy(0, static_cast<size_t>(rows * out) * 4);
    dw.upload(w.data(), w.size() * 4);
    dx.upload(x.data(), x.size() * 4);
    blas.gemm_f32(stream, static_cast<const float*>(dw.data()), static_cast<const float*>(dx.data()), rows, out, in,
                  static_cast<float*>(dy.data()));
    stream.synchronize();
    std::vector<float> got(static_cast<size_t>(rows * out));
    dy.download(got.data(), got.size() * 4);
    double worst = 0, scale = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < out; ++o) {
        double exact = 0, magnitude = 0;
        for (int64_t i = 0; i < in; ++i) {
          const double p = static_cast<double>(w[static_cast<size_t>(o * in + i)]) * x[static_cast<size_t>(r * in + i)];
          exact += p;
          magnitude += std::abs(p);
        }
        worst = std::max(worst, std::abs(got[static_cast<size_t>(r * out + o)] - exact) / magnitude);
        scale = std::max(scale, std::abs(exact));
      }
    INFO(rows << " × " << out << " × " << in << ": worst error " << worst << " of the products' magnitude");
    CHECK(scale > 0);
    CHECK(worst < 4e-6);  // float32: ~1e-7 here; TF32 operands (10-bit mantissas) would give 1e-5 and more
  }
}

TEST_CASE("cuda dequantize_bf16 equals the CPU's values rounded to bf16, bit for bit, aligned or not", "[cuda]") {
  // Q4_K and Q6_K rows go a 256-value block per warp (bf16_rows.cuh) where aligned, other types and
  // misaligned rows 32 values a lane (Decoder::chunk): every path must give the reference's bits.
  if (!have_gpu()) return;
  cuda::Stream stream(0);
  for (DType t : {DType::q4_k, DType::q6_k, DType::q5_k, DType::q8_0, DType::iq4_xs})
    for (int64_t in : {int64_t{256}, int64_t{768}, int64_t{2048}})
      for (size_t offset : {size_t{0}, size_t{1}, size_t{4}}) {  // the weight's first byte this far off 16
        const int64_t out = 37;
        const test::OwnedWeight o = test::random_weight(t, out, in, 41);
        cuda::DeviceBuffer bytes(0, o.bytes.size() + 16), w16(0, static_cast<size_t>(out * in) * 2);
        auto* base = static_cast<unsigned char*>(bytes.data()) + offset;
        stream.copy_to_device(base, o.bytes.data(), o.bytes.size());
        cuda::DeviceWeight w{t, base, out, in, nullptr, nullptr};
        cuda::dequantize_bf16(stream, w, w16.data());
        stream.synchronize();
        std::vector<uint16_t> got(static_cast<size_t>(out * in));
        w16.download(got.data(), got.size() * 2);
        std::vector<float> row(static_cast<size_t>(in));
        const size_t row_bytes = o.bytes.size() / static_cast<size_t>(out);
        size_t differ = 0;
        for (int64_t r = 0; r < out; ++r) {
          dequantize_row(t, o.bytes.data() + static_cast<size_t>(r) * row_bytes, row.data(), in);
          for (int64_t i = 0; i < in; ++i) differ += got[static_cast<size_t>(r * in + i)] != f32_to_bf16(row[static_cast<size_t>(i)]);
        }
        INFO(dtype_name(t) << ", " << in << " columns, weight " << offset << " bytes off 16-byte alignment");
        CHECK(differ == 0);
      }
}

TEST_CASE("cuda rms_norm and silu_glu match the CPU formulas", "[cuda]") {
  if (!have_gpu()) return;
  const int64_t rows = 5, dim = 300;
  const auto x = random_floats(size_t(rows * dim), 11), w = random_floats(size_t(dim), 12);
  cuda::Stream stream(0);
  cuda::DeviceBuffer dx(0, x.size() * 4), dw(0, w.size() * 4), dy(0, x.size() * 4), dz(0, x.size() * 4);
  dx.upload(x.data(), x.size() * 4);
  dw.upload(w.data(), w.size() * 4);
  cuda::rms_norm(stream, static_cast<float*>(dx.data()), static_cast<float*>(dw.data()), rows, dim, 1e-6f,
                 static_cast<float*>(dy.data()));
  cuda::silu_glu(stream, static_cast<float*>(dx.data()), static_cast<float*>(dy.data()), rows * dim,
                 static_cast<float*>(dz.data()));
  stream.synchronize();
  std::vector<float> y(x.size()), z(x.size());
  dy.download(y.data(), y.size() * 4);
  dz.download(z.data(), z.size() * 4);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < dim; ++i) ss += double(x[size_t(r * dim + i)]) * x[size_t(r * dim + i)];
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-6);
    for (int64_t i = 0; i < dim; ++i) {
      const size_t k = size_t(r * dim + i);
      const double norm = x[k] * inv * w[size_t(i)];
      CHECK(y[k] == Approx(norm).margin(1e-5).epsilon(1e-5));
      const double g = x[k];
      CHECK(z[k] == Approx(g / (1 + std::exp(-g)) * y[k]).margin(1e-5).epsilon(1e-5));
    }
  }
}

namespace {

// A paged cache of `tokens` sequences, each at its own context (contexts[t] positions filled with
// random rows; block ids shuffled so a sequence's blocks are not contiguous). fp8/int8 rows are
// encoded by the CPU's kv_encode_row, their last rope_values values in f16 (as KvPool writes MLA rows).
using RandomPagedCache = test::DevicePagedCache;
RandomPagedCache random_paged_cache(KvType type, const std::vector<int64_t>& contexts, int64_t row_values,
                                    uint32_t seed, int64_t rope_values = 0) {
  RandomPagedCache c;
  const int64_t bt = 16, elem = type == KvType::f32 ? 4 : 2;
  const bool quantised = type == KvType::fp8 || type == KvType::int8;
  const int64_t coded = row_values - rope_values;
  int64_t stride = 1, max_context = 1;
  for (int64_t n : contexts) stride = std::max(stride, (n + bt - 1) / bt), max_context = std::max(max_context, n);
  const auto tokens = static_cast<int64_t>(contexts.size()), blocks = tokens * stride;
  c.kv.type = type;
  c.kv.block_tokens = bt;
  c.kv.row_bytes = quantised ? static_cast<int64_t>(kv_row_bytes(type, coded)) + 2 * rope_values : row_values * elem;
  c.kv.rope_values = quantised ? rope_values : 0;
  c.kv.block_stride = 2 * bt * c.kv.row_bytes;
  std::mt19937 rng(seed);
  std::vector<int32_t> ids(static_cast<size_t>(blocks));
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(i);
  std::shuffle(ids.begin(), ids.end(), rng);
  // Values as the type stores them: f32 floats, or 16-bit halves/bfloats of small normal values.
  const auto values = random_floats(static_cast<size_t>(blocks * 2 * bt * row_values), seed + 1);
  std::vector<uint8_t> bytes(values.size() * static_cast<size_t>(elem));
  if (quantised) bytes.assign(static_cast<size_t>(blocks * 2 * bt * c.kv.row_bytes), 0);
  for (size_t r = 0; quantised && r < static_cast<size_t>(blocks * 2 * bt); ++r) {
    uint8_t* row = bytes.data() + r * static_cast<size_t>(c.kv.row_bytes);
    const float* v = values.data() + r * static_cast<size_t>(row_values);
    kv_encode_row(type, v, row, coded);
    kv_encode_row(KvType::f16, v + coded, row + kv_row_bytes(type, coded), rope_values);
  }
  for (size_t i = 0; !quantised && i < values.size(); ++i) {
    if (type == KvType::f32) {
      std::memcpy(bytes.data() + 4 * i, &values[i], 4);
    } else {
      uint32_t bits;
      std::memcpy(&bits, &values[i], 4);
      const auto v = static_cast<uint16_t>(type == KvType::bf16 ? bits >> 16 : ((bits >> 16) & 0x8000) | 0x3800 |
                                                                                    ((bits >> 13) & 0x3ff));
      std::memcpy(bytes.data() + 2 * i, &v, 2);
    }
  }
  c.upload(bytes.data(), bytes.size(), contexts, ids, stride);
  return c;
}

}  // namespace

TEST_CASE("cuda split-K GQA attention equals the one-block-per-head kernel at every supported shape",
          "[cuda][attention]") {
  if (!have_gpu()) return;
  struct Shape {
    int64_t heads, kv_heads, head_dim;
  };
  const std::vector<std::vector<int64_t>> batches = {{1}, {17}, {300}, {5000}, {3, 64, 1000}, {40000}};
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16, KvType::fp8, KvType::int8})
    // {32, 1, 64}: 32 warps a block, and fp8/int8 rows of 68 bytes (the 4-byte copies into shared memory).
    for (Shape s : {Shape{32, 4, 128}, Shape{8, 8, 64}, Shape{64, 4, 128}, Shape{16, 2, 256}, Shape{32, 1, 64}})
      for (const auto& contexts : batches) {
        if (contexts.size() == 1 && contexts[0] == 40000 && (type != KvType::f16 || s.head_dim != 128)) continue;
        RandomPagedCache c = random_paged_cache(type, contexts, s.kv_heads * s.head_dim, 5);
        const auto tokens = static_cast<int64_t>(contexts.size());
        const auto q = random_floats(static_cast<size_t>(tokens * s.heads * s.head_dim), 6);
        const int64_t scratch_floats = cuda::gqa_attention_scratch_floats(c.batch, s.heads, s.kv_heads, s.head_dim);
        cuda::Stream stream(0);
        cuda::DeviceBuffer dq(0, q.size() * 4), scratch(0, static_cast<size_t>(scratch_floats) * 4),
            split_out(0, q.size() * 4), plain_out(0, q.size() * 4);
        dq.upload(q.data(), q.size() * 4);
        const float scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
        const auto* qp = static_cast<const float*>(dq.data());
        auto* sp = static_cast<float*>(scratch.data());
        cuda::gqa_attention(stream, c.kv, c.batch, qp, s.heads, s.kv_heads, s.head_dim, scale, sp,
                            static_cast<float*>(split_out.data()));
        cuda::gqa_attention_unsplit(stream, c.kv, c.batch, qp, s.heads, s.kv_heads, s.head_dim, scale, sp,
                                    static_cast<float*>(plain_out.data()));
        stream.synchronize();
        std::vector<float> a(q.size()), b(q.size());
        split_out.download(a.data(), a.size() * 4);
        plain_out.download(b.data(), b.size() * 4);
        const auto [max_err, max_ref, mean_err] = deviation(a, b);
        INFO(kv_type_name(type) << " heads " << s.heads << "/" << s.kv_heads << " dim " << s.head_dim << " tokens "
                                << tokens << " context " << contexts.back() << ": max err " << max_err << " of "
                                << max_ref);
        CHECK(max_ref > 0);
        CHECK(max_err <= 2e-5 * max_ref + 1e-6);
      }
}

namespace {

// One sequence's prompt chunk over a paged cache: positions [0, start + tokens) filled with random
// rows in shuffled blocks; token t sits at position start + t, and every token's table row is the
// sequence's one table (as the forward pass uploads it).
RandomPagedCache one_sequence_cache(KvType type, int64_t start, int64_t tokens, int64_t row_values, uint32_t seed,
                                    int64_t rope_values = 0) {
  const int64_t n = start + tokens;
  RandomPagedCache c = random_paged_cache(type, {n}, row_values, seed, rope_values);
  std::vector<int32_t> table(static_cast<size_t>(c.batch.table_stride));
  c.tables.download(table.data(), table.size() * 4);
  std::vector<int32_t> rows;
  std::vector<int64_t> pos;
  for (int64_t t = 0; t < tokens; ++t) {
    rows.insert(rows.end(), table.begin(), table.end());
    pos.push_back(start + t);
  }
  c.tables = cuda::DeviceBuffer(0, rows.size() * 4);
  c.tables.upload(rows.data(), rows.size() * 4);
  c.positions = cuda::DeviceBuffer(0, pos.size() * 8);
  c.positions.upload(pos.data(), pos.size() * 8);
  c.batch.tokens = tokens;
  c.batch.positions = static_cast<const int64_t*>(c.positions.data());
  c.batch.block_tables = static_cast<const int32_t*>(c.tables.data());
  c.batch.one_sequence = true;
  return c;
}

}  // namespace

// Both row-tile forms (16 query rows a warp, the default, or 32 with TANDEM_CUDA_FLASH_TWO_TILES=1): each
// within the tolerances below of the float32 kernel; and, unsplit, the same bits — the 32-row form runs
// the same per-row operations in the same order, and the extra key tiles its wider blocks walk are
// wholly masked for the rows that see none of them (probabilities exactly 0, rescales exactly 1).
TEST_CASE("cuda flash prefill attention equals the float32 kernel within its operands' rounding",
          "[cuda][attention]") {
  if (!have_gpu()) return;
  struct Shape {
    int64_t heads, kv_heads, head_dim;
  };
  struct Chunk {
    int64_t start, tokens;
  };
  for (KvType type : {KvType::f16, KvType::bf16, KvType::fp8, KvType::int8})
    // Qwen3-30B-A3B (32/4 × 128), plain MHA at 64, a wide group, two KV heads of 64
    for (Shape s : {Shape{32, 4, 128}, Shape{8, 8, 64}, Shape{64, 4, 128}, Shape{16, 2, 64}})
      // whole tiles, a partial last tile, a chunk after a cached prefix (not tile-aligned), a long prompt,
      // short chunks after long prefixes (their positions split among blocks, then merged; for 8 heads the
      // 1000+513 chunk splits too, at position 1,024, so its first rows see nothing of the last split)
      for (Chunk ch : {Chunk{0, 64}, Chunk{0, 200}, Chunk{37, 100}, Chunk{1000, 513}, Chunk{0, 2048},
                       Chunk{3001, 64}, Chunk{2000, 130}}) {
        if (ch.tokens == 2048 && s.heads != 32) continue;
        RandomPagedCache c = one_sequence_cache(type, ch.start, ch.tokens, s.kv_heads * s.head_dim, 11);
        REQUIRE(cuda::flash_attention_supported(c.batch, s.heads, s.kv_heads, s.head_dim, c.kv));
        const auto q = random_floats(static_cast<size_t>(ch.tokens * s.heads * s.head_dim), 12);
        std::vector<float> q3(q.size());
        for (size_t i = 0; i < q.size(); ++i) q3[i] = 3.f * q[i];  // sharper softmax than unit queries
        const int64_t scratch_floats = cuda::attention_scratch_floats(c.batch, s.heads);
        std::vector<float> unsplit_one_tile;
        for (const char* two_tiles : {"0", "1"}) {
          const test::ScopedEnv form("TANDEM_CUDA_FLASH_TWO_TILES", two_tiles);
          const int64_t split_floats = cuda::flash_attention_scratch_floats(c.batch, s.heads, s.head_dim);
          // Qwen3's chunk after a 3,001-position prefix: 32 blocks unsplit, so its positions split
          if (s.heads == 32 && ch.start == 3001) CHECK(split_floats > 0);
          if (ch.start == 0 && ch.tokens == 2048) CHECK(split_floats == 0);
          cuda::Stream stream(0);
          cuda::DeviceBuffer dq(0, q3.size() * 4), scratch(0, static_cast<size_t>(scratch_floats) * 4),
              split_scratch(0, static_cast<size_t>(std::max<int64_t>(split_floats, 1)) * 4),
              flash_out(0, q3.size() * 4), plain_out(0, q3.size() * 4);
          dq.upload(q3.data(), q3.size() * 4);
          const float scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
          const auto* qp = static_cast<const float*>(dq.data());
          cuda::flash_gqa_attention(stream, c.kv, c.batch, qp, s.heads, s.kv_heads, s.head_dim, scale,
                                    split_floats > 0 ? static_cast<float*>(split_scratch.data()) : nullptr,
                                    static_cast<float*>(flash_out.data()));
          cuda::gqa_attention_unsplit(stream, c.kv, c.batch, qp, s.heads, s.kv_heads, s.head_dim, scale,
                                      static_cast<float*>(scratch.data()),
                                      static_cast<float*>(plain_out.data()));
          stream.synchronize();
          std::vector<float> a(q3.size()), b(q3.size());
          flash_out.download(a.data(), a.size() * 4);
          plain_out.download(b.data(), b.size() * 4);
          const auto [max_err, max_ref, mean_err] = deviation(a, b);
          INFO(kv_type_name(type) << " heads " << s.heads << "/" << s.kv_heads << " dim " << s.head_dim
                                  << " chunk " << ch.start << "+" << ch.tokens << " two tiles " << two_tiles
                                  << " split scratch " << split_floats << ": max err " << max_err
                                  << " mean err " << mean_err << " of " << max_ref);
          CHECK(max_ref > 0);
          CHECK(std::isfinite(max_err));
          // Q and P rounded to the cache's type: f16 keeps 11 bits, bf16 8; fp8/int8 K and V are
          // dequantised into f16 tiles (one more f16 rounding each: at most twice the f16 cache's error).
          CHECK(max_err <= (type == KvType::f16 ? 2e-3 : type == KvType::bf16 ? 1.5e-2 : 4e-3) * max_ref);
          // One block over all positions (null scratch): the row-tile forms' bits compared.
          cuda::flash_gqa_attention(stream, c.kv, c.batch, qp, s.heads, s.kv_heads, s.head_dim, scale,
                                    nullptr, static_cast<float*>(plain_out.data()));
          stream.synchronize();
          plain_out.download(b.data(), b.size() * 4);
          if (unsplit_one_tile.empty())
            unsplit_one_tile = b;
          else
            CHECK(std::memcmp(unsplit_one_tile.data(), b.data(), b.size() * 4) == 0);
          if (split_floats == 0) continue;
          // Split and merged against one block over all positions: each split's probabilities are rounded
          // to the cache's type against its own maximum, so they differ by that rounding too.
          const auto [split_err, split_ref, split_mean] = deviation(a, b);
          INFO("split against unsplit: max err " << split_err << " of " << split_ref);
          CHECK(split_err <= (type == KvType::f16 ? 2e-3 : type == KvType::bf16 ? 1.5e-2 : 4e-3) * split_ref);
        }
      }
}

TEST_CASE("cuda flash MLA prefill equals the absorbed float32 path within its operands' rounding",
          "[cuda][attention]") {
  if (!have_gpu()) return;
  struct Chunk {
    int64_t start, tokens;
  };
  const int64_t nope = 128, rope = 64, v = 128, kv_lora = 512;
  for (KvType type : {KvType::f16, KvType::bf16, KvType::fp8, KvType::int8})
    for (int64_t heads : {16, 128})  // DeepSeek-V2-Lite's and V3's heads
      for (Chunk ch : {Chunk{0, 64}, Chunk{0, 300}, Chunk{90, 200}}) {
        if (heads == 128 && ch.tokens != 300) continue;
        RandomPagedCache c = one_sequence_cache(type, ch.start, ch.tokens, kv_lora + rope, 21, rope);
        REQUIRE(cuda::flash_mla_supported(c.batch, heads, nope, rope, v, kv_lora, c.kv));
        const int64_t T = ch.tokens;
        const auto q = random_floats(static_cast<size_t>(T * heads * (nope + rope)), 22);
        std::vector<float> q_rope(static_cast<size_t>(T * heads * rope));
        for (int64_t r = 0; r < T * heads; ++r)
          for (int64_t i = 0; i < rope; ++i)
            q_rope[static_cast<size_t>(r * rope + i)] = q[static_cast<size_t>(r * (nope + rope) + nope + i)];
        auto w = random_floats(static_cast<size_t>(heads * (nope + v) * kv_lora), 23);
        for (auto& x : w) x *= 0.05f;
        cuda::Stream stream(0);
        cuda::DeviceBuffer dq(0, q.size() * 4), dr(0, q_rope.size() * 4), dw(0, w.size() * 4),
            q_latent(0, static_cast<size_t>(T * heads * kv_lora) * 4),
            attended(0, static_cast<size_t>(T * heads * kv_lora) * 4),
            scores(0, static_cast<size_t>(cuda::attention_scratch_floats(c.batch, heads)) * 4),
            work(0, cuda::flash_mla_scratch_bytes(c.batch, heads, kv_lora)),
            flash_out(0, static_cast<size_t>(T * heads * v) * 4), plain_out(0, static_cast<size_t>(T * heads * v) * 4);
        dq.upload(q.data(), q.size() * 4);
        dr.upload(q_rope.data(), q_rope.size() * 4);
        dw.upload(w.data(), w.size() * 4);
        cuda::DeviceWeight kv_b;
        kv_b.type = DType::f32;
        kv_b.data = dw.data();
        kv_b.out_features = heads * (nope + v);
        kv_b.in_features = kv_lora;
        const float scale = 1.f / std::sqrt(static_cast<float>(nope + rope));
        const auto* qp = static_cast<const float*>(dq.data());
        cuda::flash_mla_prefill(stream, c.kv, c.batch, kv_b, cuda::TensorCoreMath::tf32x3, qp, heads, nope, rope, v,
                                kv_lora, scale, work.data(), static_cast<float*>(flash_out.data()));
        cuda::mla_absorb_query(stream, kv_b, heads, nope, rope, v, kv_lora, qp, T, static_cast<float*>(q_latent.data()));
        cuda::mla_attention_unsplit(stream, c.kv, c.batch, static_cast<const float*>(q_latent.data()),
                                    static_cast<const float*>(dr.data()), heads, kv_lora, rope, scale,
                                    static_cast<float*>(scores.data()), static_cast<float*>(attended.data()));
        cuda::mla_expand_values(stream, kv_b, heads, nope, v, kv_lora, static_cast<const float*>(attended.data()), T,
                                static_cast<float*>(plain_out.data()));
        stream.synchronize();
        std::vector<float> a(static_cast<size_t>(T * heads * v)), b(a.size());
        flash_out.download(a.data(), a.size() * 4);
        plain_out.download(b.data(), b.size() * 4);
        const auto [max_err, max_ref, mean_err] = deviation(a, b);
        INFO(kv_type_name(type) << " heads " << heads << " chunk " << ch.start << "+" << T << ": max err " << max_err
                                << " of " << max_ref);
        CHECK(max_ref > 0);
        CHECK(std::isfinite(max_err));
        // K, V, Q and P in the cache's type (the expanded K and V are rounded once more than the latent);
        // fp8/int8: the dequantised latent is exact, the tiles f16.
        CHECK(max_err <= (type == KvType::bf16 ? 3e-2 : 4e-3) * max_ref);
      }
}

TEST_CASE("cuda flash prefill attention applies only where it can", "[cuda][attention]") {
  if (!have_gpu()) return;
  RandomPagedCache c = one_sequence_cache(KvType::f16, 0, 64, 4 * 128, 13);
  CHECK(cuda::flash_attention_supported(c.batch, 32, 4, 128, c.kv));
  cuda::DeviceBatch b = c.batch;
  b.one_sequence = false;
  CHECK_FALSE(cuda::flash_attention_supported(b, 32, 4, 128, c.kv));  // tokens of several sequences
  b = c.batch;
  b.tokens = 63;
  CHECK_FALSE(cuda::flash_attention_supported(b, 32, 4, 128, c.kv));  // decode-sized: split-K instead
  CHECK_FALSE(cuda::flash_attention_supported(c.batch, 16, 2, 256, c.kv));  // head_dim 256
  CHECK_FALSE(cuda::flash_attention_supported(c.batch, 30, 4, 128, c.kv));  // heads not a multiple
  cuda::PagedKv f32 = c.kv;
  f32.type = KvType::f32;
  CHECK_FALSE(cuda::flash_attention_supported(c.batch, 32, 4, 128, f32));  // float32 cache: exact kernels
}

TEST_CASE("cuda split-K MLA attention equals the one-block-per-head kernel", "[cuda][attention]") {
  if (!have_gpu()) return;
  // The float32 split kernel throughout: f16/bf16 caches of 512 and 256 latents would otherwise take
  // the tensor-core kernel, whose rounded operands test_cuda_mla_tensor_cores.cpp checks.
  const test::ScopedEnv cuda_cores("TANDEM_CUDA_MLA_TC", "0");
  struct Shape {
    int64_t heads, kv_lora, rope;
  };
  std::vector<int64_t> prefill;  // a 200-token chunk: token i sees i + 1 positions
  for (int64_t i = 1; i <= 200; ++i) prefill.push_back(i);
  const std::vector<std::vector<int64_t>> batches = {{1}, {17}, {300}, {5000}, {3, 64, 1000}, prefill};
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16, KvType::fp8, KvType::int8})
    // DeepSeek-V3 (128 heads), V2-Lite (16), the tiny fixtures' latent (64 + 16), a partial head group
    for (Shape s : {Shape{128, 512, 64}, Shape{16, 512, 64}, Shape{4, 64, 16}, Shape{12, 256, 32}})
      for (const auto& contexts : batches) {
        if (contexts.size() > 3 && s.heads > 16) continue;  // the long chunk once per small shape is enough
        RandomPagedCache c = random_paged_cache(type, contexts, s.kv_lora + s.rope, 7, s.rope);
        const auto tokens = static_cast<int64_t>(contexts.size());
        const auto ql = random_floats(static_cast<size_t>(tokens * s.heads * s.kv_lora), 8);
        const auto qr = random_floats(static_cast<size_t>(tokens * s.heads * s.rope), 9);
        const int64_t scratch_floats = cuda::mla_attention_scratch_floats(c.batch, s.heads, s.kv_lora);
        cuda::Stream stream(0);
        cuda::DeviceBuffer dl(0, ql.size() * 4), dr(0, qr.size() * 4),
            scratch(0, static_cast<size_t>(scratch_floats) * 4), split_out(0, ql.size() * 4),
            plain_out(0, ql.size() * 4);
        dl.upload(ql.data(), ql.size() * 4);
        dr.upload(qr.data(), qr.size() * 4);
        const float scale = 1.f / std::sqrt(static_cast<float>(s.kv_lora / 4 + s.rope));
        const auto* lp = static_cast<const float*>(dl.data());
        const auto* rp = static_cast<const float*>(dr.data());
        auto* sp = static_cast<float*>(scratch.data());
        cuda::mla_attention(stream, c.kv, c.batch, lp, rp, s.heads, s.kv_lora, s.rope, scale, sp,
                            static_cast<float*>(split_out.data()));
        cuda::mla_attention_unsplit(stream, c.kv, c.batch, lp, rp, s.heads, s.kv_lora, s.rope, scale, sp,
                                    static_cast<float*>(plain_out.data()));
        stream.synchronize();
        std::vector<float> a(ql.size()), b(ql.size());
        split_out.download(a.data(), a.size() * 4);
        plain_out.download(b.data(), b.size() * 4);
        const auto [max_err, max_ref, mean_err] = deviation(a, b);
        INFO(kv_type_name(type) << " heads " << s.heads << " latent " << s.kv_lora << " + " << s.rope << " tokens "
                                << tokens << " context " << contexts.back() << ": max err " << max_err << " of "
                                << max_ref);
        CHECK(max_ref > 0);
        CHECK(max_err <= 2e-5 * max_ref + 1e-6);
      }
}
