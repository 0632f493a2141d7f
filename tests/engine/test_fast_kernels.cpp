// The fast CPU kernels (src/backend/cpu/kernels) against their references: every kernel at every
// ISA level this CPU has (each forced in turn) against the scalar kernel on the same quantised
// activations, and against dequantise-then-float32 on the unquantised activations within the
// activation-rounding bound Σ|w_i|·d_block/2; the backend's fast linear, MLP and MoE against the
// reference operators at edge shapes; perplexity of the bundled trained model fast vs reference.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "backend/cpu/kernels/activation_blocks.hpp"
#include "backend/cpu/kernels/int8_strips.hpp"
#include "backend/cpu/kernels/kernel_table.hpp"
#include "backend/cpu/kernels/matmul_tile.hpp"
#include "backend/cpu/kernels/strip_repack.hpp"
#include "support/fixtures.hpp"
#include "support/random_experts.hpp"
#include "support/random_weights.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cpu/reference/linear.hpp"
#include "tandem/backend/cpu/reference/moe.hpp"
#include "tandem/engine/engine.hpp"
#include "tandem/engine/perplexity.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/text/tokenizer.hpp"

using namespace tandem;
using namespace tandem::kernels;

namespace {

constexpr DType kTypes[] = {DType::q4_k, DType::q5_k, DType::q6_k,   DType::iq4_xs, DType::q8_0,
                            DType::q4_0, DType::q5_0, DType::q4_1,   DType::q5_1,   DType::iq4_nl,
                            DType::f32,  DType::f16,  DType::bf16,   DType::f8_e4m3};

// Activations whose blocks differ in scale (as hidden states do), with an outlier now and then.
std::vector<float> random_activations(int64_t rows, int64_t in, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * in));
  for (int64_t i = 0; i < rows * in; ++i) {
    const float block_scale = 0.1f + static_cast<float>((i / 32) % 7);
    x[static_cast<size_t>(i)] = normal(rng) * block_scale * (u(rng) < 0.01f ? 20.0f : 1.0f);
  }
  return x;
}

// Random rows at full scale (unit float deviation, every FP8 code, block scales 0.5–2) and their
// dequantised values.
struct Case : test::RandomMatrix {
  DType type;
  int64_t rows, in;
  std::vector<float> dequantised;  // [rows, in], FP8 scales applied

  Case(DType t, int64_t r, int64_t n, std::mt19937& rng)
      : RandomMatrix(t, r, n, rng, 1.0f, /*modest_fp8=*/false, 0.5f, 2.0f), type(t), rows(r), in(n) {
    dequantised.resize(static_cast<size_t>(r * n));
    dequantize_weight_rows(weight, 0, r, dequantised.data());
  }
  const float* w_row(int64_t o) const { return dequantised.data() + o * in; }
};

// Per value, the largest error the activation format's rounding can add (d / 2 of its block).
std::vector<double> rounding_bound(ActFormat format, const float* x, int64_t in) {
  std::vector<double> bound(static_cast<size_t>(in), 0.0);
  const int64_t block = act_block_values(format);
  if (block == 1) return bound;
  for (int64_t b = 0; b < in / block; ++b) {
    double amax = 0;
    for (int64_t i = b * block; i < (b + 1) * block; ++i) amax = std::max(amax, std::fabs(double(x[i])));
    for (int64_t i = b * block; i < (b + 1) * block; ++i)
      bound[static_cast<size_t>(i)] = amax / 254.0 * 1.0001;
  }
  return bound;
}

std::vector<float> dequantised_activations(ActFormat format, const uint8_t* q, int64_t in) {
  std::vector<float> x(static_cast<size_t>(in));
  if (format == ActFormat::q8k) {
    for (int64_t b = 0; b < in / 256; ++b) {
      const auto* blk = reinterpret_cast<const ActQ8K*>(q) + b;
      for (int i = 0; i < 256; ++i) x[static_cast<size_t>(b * 256 + i)] = blk->d * blk->q[i];
    }
  } else {
    for (int64_t b = 0; b < in / 32; ++b) {
      const auto* blk = reinterpret_cast<const ActQ8*>(q) + b;
      for (int i = 0; i < 32; ++i) x[static_cast<size_t>(b * 32 + i)] = blk->d * blk->q[i];
    }
  }
  return x;
}

std::vector<IsaLevel> levels_here() {
  std::vector<IsaLevel> out;
  for (IsaLevel l : {IsaLevel::scalar, IsaLevel::avx2, IsaLevel::avx512, IsaLevel::amx})
    if (isa_level_supported(l))
      out.push_back(l);
    else
      WARN("this CPU lacks " << isa_level_name(l) << ": its kernels are not tested here");
  return out;
}

}  // namespace

TEST_CASE("activation quantisation: Q8K and Q8 blocks round within d/2 and carry exact sums",
          "[engine][kernels]") {
  std::mt19937 rng(7);
  const auto x = random_activations(1, 512, rng);
  std::vector<ActQ8K> k(2);
  quantize_act_q8k(x.data(), 512, k.data());
  for (int b = 0; b < 2; ++b) {
    for (int g = 0; g < 16; ++g) {
      int sum = 0;
      for (int i = 0; i < 16; ++i) sum += k[b].q[g * 16 + i];
      CHECK(k[b].sums[g] == sum);
    }
    for (int i = 0; i < 256; ++i)
      CHECK(std::fabs(x[static_cast<size_t>(b * 256 + i)] - k[b].d * k[b].q[i]) <= k[b].d * 0.5001f);
  }
  std::vector<ActQ8> q(16);
  quantize_act_q8(x.data(), 512, q.data());
  for (int b = 0; b < 16; ++b) {
    int sum = 0;
    for (int i = 0; i < 32; ++i) {
      sum += q[b].q[i];
      CHECK(std::fabs(x[static_cast<size_t>(b * 32 + i)] - q[b].d * q[b].q[i]) <= q[b].d * 0.5001f);
    }
    CHECK(q[b].sum == sum);
  }
  std::vector<float> zeros(256, 0.0f);
  quantize_act_q8k(zeros.data(), 256, k.data());
  CHECK(k[0].d == 0.0f);
  CHECK(k[0].q[17] == 0);
}

TEST_CASE("activation quantisers at every ISA level write the scalar quantiser's bytes", "[engine][kernels]") {
  std::mt19937 rng(11);
  // Random rows at several magnitudes, a zero block, and values that land exactly halfway between
  // two codes (block maximum 127: the inverse scale is 1, so 2.5 must round to 2 and -3.5 to -4).
  std::vector<float> x = random_activations(1, 2048, rng);
  for (int64_t i = 256; i < 512; ++i) x[static_cast<size_t>(i)] *= 1e-4f;
  for (int64_t i = 512; i < 768; ++i) x[static_cast<size_t>(i)] = 0.0f;
  for (int64_t i = 768; i < 1024; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i % 17) - 8.5f;
  x[768] = 127.0f;
  for (int64_t i = 1024; i < 1280; ++i) x[static_cast<size_t>(i)] *= 3e4f;
  const KernelTable scalar_table = make_kernel_table(IsaLevel::scalar);
  for (const ActFormat format : {ActFormat::q8k, ActFormat::q8}) {
    const int64_t bytes = act_row_bytes(format, 2048);
    std::vector<uint8_t> want(static_cast<size_t>(bytes));
    quantize_rows(scalar_table, format, x.data(), 2048, 2048, 0, 1, want.data());
    for (IsaLevel level : levels_here()) {
      INFO(isa_level_name(level) << (format == ActFormat::q8k ? " q8k" : " q8"));
      std::vector<uint8_t> got(static_cast<size_t>(bytes), 0xcd);
      quantize_rows(make_kernel_table(level), format, x.data(), 2048, 2048, 0, 1, got.data());
      CHECK(got == want);
    }
  }
}

TEST_CASE("SiLU-GLU at every ISA level matches the scalar definition", "[engine][kernels]") {
  // Gate values across SiLU's range (deep negative: exp(-g) overflows; large positive: SiLU ≈ g),
  // lengths that end mid-vector, and the result written over the gate (the MoE's in-place use).
  std::vector<float> gate, up;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> wide(-12.0f, 12.0f);
  for (int i = 0; i < 301; ++i) {
    gate.push_back(wide(rng));
    up.push_back(wide(rng) / 4);
  }
  for (const float extreme : {-200.0f, -88.5f, -87.0f, -20.0f, -1e-30f, 0.0f, 1e-30f, 20.0f, 87.0f, 89.0f, 300.0f}) {
    gate.push_back(extreme);
    up.push_back(1.5f);
  }
  const KernelTable scalar_table = make_kernel_table(IsaLevel::scalar);
  for (const int64_t n : {int64_t{1}, int64_t{15}, int64_t{16}, int64_t{17}, static_cast<int64_t>(gate.size())}) {
    std::vector<float> want(static_cast<size_t>(n));
    scalar_table.silu_mul(gate.data() + gate.size() - n, up.data() + up.size() - n, n, want.data());
    for (IsaLevel level : levels_here()) {
      INFO(isa_level_name(level) << " n " << n);
      std::vector<float> got(gate.end() - n, gate.end());
      make_kernel_table(level).silu_mul(got.data(), up.data() + up.size() - n, n, got.data());
      for (size_t i = 0; i < want.size(); ++i) {
        INFO("gate " << gate[gate.size() - static_cast<size_t>(n) + i]);
        CHECK(std::isfinite(got[i]));
        CHECK(std::fabs(got[i] - want[i]) <= 1e-6f * std::fabs(want[i]) + 1e-30f);
      }
    }
  }
}

TEST_CASE("every fast kernel at every ISA level matches the scalar kernel and dequantise-then-f32",
          "[engine][kernels]") {
  std::mt19937 rng(42);
  const KernelTable reference = make_kernel_table(IsaLevel::scalar);
  for (IsaLevel level : levels_here()) {
    const KernelTable table = make_kernel_table(level);
    for (DType type : kTypes) {
      const WeightKind kind = *weight_kind_for(type);
      const ActFormat format = act_format(kind);
      const bool quantised = format != ActFormat::f32;
      // K-quants take whole 256-value rows, the 32-value block types also 1408 and 1440 (not multiples
      // of 256: the rows they exist for; 1440 an odd count of blocks, for kernels that take two at a
      // time); float types get odd widths and partial FP8 blocks too.
      const std::vector<int64_t> widths = format == ActFormat::q8k  ? std::vector<int64_t>{256, 768}
                                          : format == ActFormat::q8 ? std::vector<int64_t>{256, 768, 1408, 1440}
                                                                    : std::vector<int64_t>{256, 200, 37};
      for (int64_t in : widths) {
        const int64_t rows = 3, tokens = 4;
        const Case c(type, rows, in, rng);
        const auto x = random_activations(tokens, in, rng);
        const int64_t stride = act_row_bytes(format, in);
        std::vector<uint8_t> q(static_cast<size_t>(tokens * stride));
        quantize_rows(table, format, x.data(), in, in, 0, tokens, q.data());
        const ActRows xa = quantised ? ActRows{q.data(), stride}
                                     : ActRows{reinterpret_cast<const uint8_t*>(x.data()), in * 4};
        for (int nt = 1; nt <= tokens; ++nt) {
          for (int64_t o = 0; o < rows; ++o) {
            INFO(isa_level_name(level)
                 << " " << dtype_name(type) << " in=" << in << " tokens=" << nt << " row=" << o);
            const float* scales =
                c.scales.empty() ? nullptr : c.scales.data() + (o / 128) * ((in + 127) / 128);
            float y[kMaxTokens], y_ref[kMaxTokens];
            table.dot[static_cast<int>(kind)](c.weight.weight.row_ptr(o), xa.data, xa.stride, nt, in, scales,
                                              y, 1);
            reference.dot[static_cast<int>(kind)](c.weight.weight.row_ptr(o), xa.data, xa.stride, nt, in,
                                                  scales, y_ref, 1);
            for (int t = 0; t < nt; ++t) {
              const float* xt = x.data() + t * in;
              const auto xq = quantised ? dequantised_activations(format, q.data() + t * stride, in)
                                        : std::vector<float>(xt, xt + in);
              const auto bound = rounding_bound(format, xt, in);
              double exact_q = 0, magnitude = 0, exact = 0, rounding = 0;
              for (int64_t i = 0; i < in; ++i) {
                const double w = c.w_row(o)[i];
                exact_q += w * xq[static_cast<size_t>(i)];
                magnitude += std::fabs(w * xt[i]) + std::fabs(w * xq[static_cast<size_t>(i)]);
                exact += w * xt[i];
                rounding += std::fabs(w) * bound[static_cast<size_t>(i)];
              }
              // Same integer sums, float order differs: float32 rounding only.
              CHECK(std::fabs(y[t] - y_ref[t]) <= 2e-6 * magnitude + 1e-6);
              CHECK(std::fabs(y[t] - exact_q) <= 2e-6 * magnitude + 1e-6);
              // Against the unquantised activations: within the activation rounding bound.
              CHECK(std::fabs(y[t] - exact) <= rounding + 2e-6 * magnitude + 1e-6);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("tile kernels (AVX-512, AMX, emulated AMX) match the scalar dot kernel through matmul_tile",
          "[engine][kernels][amx]") {
  struct Table {
    const char* name;
    KernelTable table;
  };
  std::vector<Table> tables;
  if (isa_level_supported(IsaLevel::avx512)) {
    tables.push_back({"avx512", make_kernel_table(IsaLevel::avx512)});
    tables.push_back({"emulated amx", make_emulated_amx_table()});
  } else {
    WARN("this CPU lacks avx512: its tile kernels and the emulated AMX ones are not tested here");
  }
  if (isa_level_supported(IsaLevel::amx))
    tables.push_back({"amx", make_kernel_table(IsaLevel::amx)});
  else
    WARN("SKIPPED: this CPU (or OS) lacks AMX-TILE/AMX-INT8: the hardware tile kernels are not tested here");
  if (tables.empty()) return;
  std::mt19937 rng(5);
  const KernelTable reference = make_kernel_table(IsaLevel::scalar);
  for (DType type : {DType::q4_k, DType::q5_k, DType::q6_k, DType::iq4_xs, DType::q8_0, DType::q4_0, DType::q5_0,
                     DType::q4_1, DType::q5_1, DType::iq4_nl}) {
    const WeightKind kind = *weight_kind_for(type);
    const ActFormat format = act_format(kind);
    for (const int64_t in : {int64_t{256}, int64_t{768}, int64_t{1408}}) {
      if (in % 256 != 0 && format == ActFormat::q8k) continue;  // K-quants come in 256-value blocks
      // 37 rows: two full strips and a partial one; token counts from the threshold up, with every
      // remainder of the 4-token (AVX-512) and 16-token (AMX) steps.
      const int64_t rows = 37;
      const Case c(type, rows, in, rng);
      for (const int64_t tokens :
           {int64_t{16}, int64_t{17}, int64_t{18}, int64_t{19}, int64_t{27}, int64_t{30}, int64_t{40}}) {
        const auto x = random_activations(tokens, in, rng);
        const int64_t stride = act_row_bytes(format, in);
        std::vector<uint8_t> q(static_cast<size_t>(tokens * stride));
        quantize_rows(make_kernel_table(IsaLevel::scalar), format, x.data(), in, in, 0, tokens, q.data());
        std::vector<float> y_ref(static_cast<size_t>(tokens * rows));
        for (int64_t o = 0; o < rows; ++o)
          for (int64_t t = 0; t < tokens; ++t)
            reference.dot[static_cast<int>(kind)](c.weight.weight.row_ptr(o), q.data() + t * stride, stride, 1, in,
                                                  nullptr, &y_ref[static_cast<size_t>(t * rows + o)], 1);
        for (const Table& tb : tables) {
          REQUIRE(tb.table.tile[static_cast<int>(kind)] != nullptr);
          const int64_t ws_bytes = matmul_tile_workspace_bytes(tb.table, kind, in);
          REQUIRE(ws_bytes > 0);
          std::vector<uint8_t> workspace(static_cast<size_t>(ws_bytes));
          // Columns [3, 37): the first strip starts at an offset; y has a wider stride than the tile.
          const int64_t o0 = 3, y_stride = rows + 5;
          std::vector<float> y(static_cast<size_t>(tokens * y_stride), -99.0f);
          matmul_tile(tb.table, c.weight, kind, {q.data(), stride}, tokens, o0, rows, nullptr, y.data(), y_stride,
                      workspace.data() + 1);  // misaligned on purpose: matmul_tile aligns it
          for (int64_t t = 0; t < tokens; ++t) {
            for (int64_t o = o0; o < rows; ++o) {
              INFO(tb.name << " " << dtype_name(type) << " in=" << in << " tokens=" << tokens << " t=" << t
                           << " row=" << o);
              double magnitude = 0;
              for (int64_t i = 0; i < in; ++i)
                magnitude += std::fabs(c.w_row(o)[i] * x[static_cast<size_t>(t * in + i)]);
              CHECK(std::fabs(y[static_cast<size_t>(t * y_stride + o - o0)] - y_ref[static_cast<size_t>(t * rows + o)]) <=
                    2e-6 * magnitude + 1e-6);
            }
            for (int64_t o = rows - o0; o < y_stride; ++o) CHECK(y[static_cast<size_t>(t * y_stride + o)] == -99.0f);
          }
        }
      }
    }
  }
}

TEST_CASE("int8 strips: requantised within half a step; the AMX kernel (emulated, and the hardware) gives the "
          "reference's bits",
          "[engine][kernels][amx]") {
  if (!isa_level_supported(IsaLevel::avx512)) {
    WARN("SKIPPED: this CPU lacks avx512: the int8 tile kernels are not tested here");
    return;
  }
  struct Table {
    const char* name;
    KernelTable table;
  };
  std::vector<Table> tables{{"emulated amx", make_emulated_amx_table()}};
  if (isa_level_supported(IsaLevel::amx))
    tables.push_back({"amx", make_kernel_table(IsaLevel::amx)});
  else
    WARN("SKIPPED: this CPU (or OS) lacks AMX-INT8: the hardware int8 kernel is not tested here");
  for (const Table& tb : tables) REQUIRE(tb.table.int8_wide != nullptr);
  CHECK(make_kernel_table(IsaLevel::avx512).int8_wide == nullptr);
  CHECK_FALSE(int8_requantisable(DType::q4_k, 300));  // not whole 256-value blocks
  CHECK(int8_strips_bytes(DType::q4_k, 37, 300) == 0);
  CHECK(int8_strips_bytes(DType::q4_k, 37, 512) == 3 * 2 * kInt8BlockBytes);

  std::mt19937 rng(11);
  const KernelTable scalar = make_kernel_table(IsaLevel::scalar);
  for (DType type : {DType::q4_k, DType::q6_k, DType::q5_k, DType::q8_0, DType::bf16}) {
    for (const int64_t in : {int64_t{256}, int64_t{768}}) {
      const int64_t rows = 37;  // two whole strips and a partial one
      const Case c(type, rows, in, rng);
      const int64_t strips = (rows + kTileRows - 1) / kTileRows, strip_bytes = int8_strip_bytes(in);
      std::vector<uint8_t> storage(static_cast<size_t>(int8_strips_bytes(type, rows, in) + 64));
      uint8_t* copy = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64) % 64;
      requantise_int8_strips(type, static_cast<const uint8_t*>(c.weight.weight.data),
                             static_cast<int64_t>(c.weight.weight.row_stride_bytes()), rows, in, 0, strips, copy);
      // Each value within half a step of its stored value; the step is max|w| / 127 of its block.
      const auto code_of = [&](int64_t r, int64_t i) {
        const uint8_t* blk = copy + r / kTileRows * strip_bytes + i / 256 * kInt8BlockBytes;
        return static_cast<int8_t>(blk[int8_code_offset(i % 256, r % kTileRows)]);
      };
      const auto scale_of = [&](int64_t r, int64_t b) {
        float s;
        std::memcpy(&s, copy + r / kTileRows * strip_bytes + b * kInt8BlockBytes + kInt8Scales + 4 * (r % kTileRows), 4);
        return s;
      };
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < in / 256; ++b) {
          float amax = 0;
          for (int64_t i = b * 256; i < (b + 1) * 256; ++i) amax = std::max(amax, std::fabs(c.w_row(r)[i]));
          const float s = scale_of(r, b);
          REQUIRE(s == amax / 127.0f);
          for (int64_t i = b * 256; i < (b + 1) * 256; ++i) {
            INFO(dtype_name(type) << " row " << r << " value " << i);
            CHECK(std::fabs(c.w_row(r)[i] - s * code_of(r, i)) <= 0.5f * s * 1.0001f + 1e-12f);
          }
        }
      // The partial strip's missing rows are zeros.
      for (int64_t r = rows; r < strips * kTileRows; ++r) CHECK(scale_of(r, 0) == 0.0f);

      for (const int64_t tokens : {int64_t{16}, int64_t{32}, int64_t{48}, int64_t{80}}) {
        const auto x = random_activations(tokens, in, rng);
        const int64_t stride = act_row_bytes(ActFormat::q8k, in);
        std::vector<uint8_t> q(static_cast<size_t>(tokens * stride));
        quantize_rows(scalar, ActFormat::q8k, x.data(), in, in, 0, tokens, q.data());
        const int64_t y_stride = 21;
        for (int64_t st = 0; st < strips; ++st) {
          const int n = static_cast<int>(std::min<int64_t>(kTileRows, rows - st * kTileRows));
          std::vector<float> want(static_cast<size_t>(tokens * y_stride), -7.0f);
          int8_strip_reference(copy + st * strip_bytes, n, q.data(), stride, tokens, in, want.data(), y_stride);
          for (const Table& tb : tables) {
            std::vector<float> y(static_cast<size_t>(tokens * y_stride), -7.0f);
            tb.table.int8_wide(copy + st * strip_bytes, n, q.data(), stride, tokens, in, y.data(), y_stride, 4096);
            INFO(tb.name << " " << dtype_name(type) << " in=" << in << " tokens=" << tokens << " strip=" << st);
            CHECK(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)) == 0);  // untouched columns too
          }
          // The reference against the stored weights on the quantised activations: the requantisation
          // moves each product by at most |x̂|·s/2.
          for (int64_t t = 0; t < tokens; ++t) {
            const auto xh = dequantised_activations(ActFormat::q8k, q.data() + t * stride, in);
            for (int r = 0; r < n; ++r) {
              const int64_t row = st * kTileRows + r;
              double exact = 0, bound = 0, magnitude = 0;
              for (int64_t i = 0; i < in; ++i) {
                exact += double(c.w_row(row)[i]) * xh[static_cast<size_t>(i)];
                bound += std::fabs(xh[static_cast<size_t>(i)]) * 0.5 * scale_of(row, i / 256);
                magnitude += std::fabs(double(c.w_row(row)[i]) * xh[static_cast<size_t>(i)]);
              }
              INFO(dtype_name(type) << " in=" << in << " t=" << t << " row=" << row);
              CHECK(std::fabs(want[static_cast<size_t>(t * y_stride + r)] - exact) <= bound * 1.0001 + 2e-6 * magnitude + 1e-6);
            }
          }
        }
      }
    }
  }
}

// A fast CPU backend whose prepare makes the repacked strips only: on a CPU with AMX it would also
// make int8 copies (cpu_int8_enabled), which these tests of the strips do not count or expect.
static std::unique_ptr<Backend> strips_only(std::unique_ptr<Backend> backend) {
  cpu_backend_set_int8_copies(*backend, false);
  return backend;
}

TEST_CASE("repacked Q4_K and Q6_K strips: AVX-512 gives the per-call tile kernel's bits, AMX the scalar kernel's sums",
          "[engine][kernels]") {
  if (!isa_level_supported(IsaLevel::avx512)) {
    WARN("SKIPPED: this CPU lacks avx512: the repacked kernels are not tested here");
    return;
  }
  const KernelTable table = make_kernel_table(IsaLevel::avx512);
  const KernelTable reference = make_kernel_table(IsaLevel::scalar);
  for (const DType type : {DType::q4_k, DType::q6_k}) {
    const WeightKind kind = *weight_kind_for(type);
    INFO(dtype_name(type));
    REQUIRE(repackable(kind));
    REQUIRE(table.repacked[static_cast<int>(kind)] != nullptr);
    // The AVX-512 kernel at every count; with AMX (emulated here, the hardware where the CPU has it)
    // the tile kernel from kTileMinTokens tokens on.
    struct Table {
      const char* name;
      KernelTable table;
    };
    // Q6_K has no AMX kernel on its strips: every count takes the AVX-512 one there too.
    std::vector<Table> tables{{"avx512", table}, {"emulated amx", make_emulated_amx_table()}};
    const bool amx_wide = kind == WeightKind::q4_k;
    REQUIRE((tables[1].table.repacked_wide[static_cast<int>(kind)] != nullptr) == amx_wide);
    if (isa_level_supported(IsaLevel::amx))
      tables.push_back({"amx", make_kernel_table(IsaLevel::amx)});
    else
      WARN("SKIPPED: this CPU (or OS) lacks AMX-TILE/AMX-INT8: the hardware AMX kernel on repacked strips is not tested here");
    std::mt19937 rng(9);
    for (const int64_t in : {int64_t{256}, int64_t{768}, int64_t{2048}}) {
      // 37 rows: two full strips and a partial one.
      const int64_t rows = 37;
      const Case c(type, rows, in, rng);
      const int64_t bytes = repacked_bytes(kind, rows, in);
      REQUIRE(bytes == 3 * (in / 256) * (kind == WeightKind::q4_k ? kRepackedQ4KBlockBytes : kRepackedQ6KBlockBytes));
      std::vector<uint8_t> storage(static_cast<size_t>(bytes + kRepackedAlign));
      uint8_t* repacked = storage.data() + (kRepackedAlign - reinterpret_cast<uintptr_t>(storage.data()) % kRepackedAlign);
      // In two calls, as the pool splits the work.
      repack_strips(kind, static_cast<const uint8_t*>(c.weight.weight.data), c.weight.weight.row_stride_bytes(), rows,
                    in, 0, 1, repacked);
      repack_strips(kind, static_cast<const uint8_t*>(c.weight.weight.data), c.weight.weight.row_stride_bytes(), rows,
                    in, 1, 3, repacked);
      for (const int64_t tokens : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{5}, int64_t{16}, int64_t{19}, int64_t{40}}) {
        const auto x = random_activations(tokens, in, rng);
        const int64_t stride = act_row_bytes(ActFormat::q8k, in);
        std::vector<uint8_t> q(static_cast<size_t>(tokens * stride));
        quantize_rows(reference, ActFormat::q8k, x.data(), in, in, 0, tokens, q.data());
        // Rows [16, 37): the second and the partial third strip; y wider than the tile.
        const int64_t o0 = 16, y_stride = rows + 3;
        std::vector<float> packed_per_call(static_cast<size_t>(tokens * y_stride), -99.0f);
        // The per-call packing tile kernel, on any token count (called directly: matmul_tile takes the
        // dot kernels below kTileMinTokens).
        std::vector<uint8_t> workspace(static_cast<size_t>(matmul_tile_workspace_bytes(table, kind, in)) + 64);
        uint8_t* aligned = workspace.data() + (64 - reinterpret_cast<uintptr_t>(workspace.data()) % 64);
        for (int64_t o = o0; o < rows; o += kTileRows)
          table.tile[static_cast<int>(kind)](c.weight.weight.row_ptr(o), c.weight.weight.row_stride_bytes(),
                                             static_cast<int>(std::min<int64_t>(kTileRows, rows - o)), q.data(), stride,
                                             tokens, in, packed_per_call.data() + (o - o0), y_stride, aligned);
        for (const Table& tb : tables) {
          std::vector<float> got(static_cast<size_t>(tokens * y_stride), -99.0f);
          matmul_tile(tb.table, c.weight, kind, {q.data(), stride}, tokens, o0, rows, nullptr, got.data(),
                      y_stride, nullptr, repacked);
          for (int64_t t = 0; t < tokens; ++t) {
            for (int64_t o = o0; o < rows; ++o) {
              INFO(tb.name << " in=" << in << " tokens=" << tokens << " t=" << t << " row=" << o);
              const float value = got[static_cast<size_t>(t * y_stride + o - o0)];
              // The AVX-512 kernel (every token of its table, an AMX table's tokens past its last whole
              // 16) gives the per-call kernel's bits; AMX's split-scale sums are rounded once instead.
              if (std::string_view(tb.name) == "avx512" || !amx_wide || t >= tokens / kTileMinTokens * kTileMinTokens)
                CHECK(value == packed_per_call[static_cast<size_t>(t * y_stride + o - o0)]);
              float want = 0;
              reference.dot[static_cast<int>(kind)](c.weight.weight.row_ptr(o), q.data() + t * stride, stride,
                                                    1, in, nullptr, &want, 1);
              double magnitude = 0;
              for (int64_t i = 0; i < in; ++i)
                magnitude += std::fabs(c.w_row(o)[i] * x[static_cast<size_t>(t * in + i)]);
              CHECK(std::fabs(value - want) <= 2e-6 * magnitude + 1e-6);
            }
            for (int64_t o = rows - o0; o < y_stride; ++o)
              CHECK(got[static_cast<size_t>(t * y_stride + o)] == -99.0f);
          }
        }
      }
    }
  }
}

// The prefetch itself cannot change a result (the kernel tests above run with it on); what can go
// wrong is the knob: the table must take the variable, and junk must be refused, not read as 0.
TEST_CASE("the weight prefetch distance: TANDEM_CPU_PREFETCH sets it and junk is refused",
          "[engine][kernels]") {
  const char* saved = std::getenv("TANDEM_CPU_PREFETCH");
  const std::string restore = saved ? saved : "";
  ::unsetenv("TANDEM_CPU_PREFETCH");
  CHECK(make_kernel_table(IsaLevel::scalar).prefetch_bytes == kDefaultPrefetchBytes);
  ::setenv("TANDEM_CPU_PREFETCH", "", 1);
  CHECK(make_kernel_table(IsaLevel::scalar).prefetch_bytes == kDefaultPrefetchBytes);
  ::setenv("TANDEM_CPU_PREFETCH", "0", 1);
  CHECK(make_kernel_table(IsaLevel::scalar).prefetch_bytes == 0);
  ::setenv("TANDEM_CPU_PREFETCH", "512", 1);
  CHECK(make_kernel_table(IsaLevel::scalar).prefetch_bytes == 512);
  for (const char* junk : {"abc", "-1", "4k", "1048577", "99999999999999999999999"}) {
    ::setenv("TANDEM_CPU_PREFETCH", junk, 1);
    INFO(junk);
    CHECK_THROWS_WITH(make_kernel_table(IsaLevel::scalar),
                      Catch::Contains("TANDEM_CPU_PREFETCH") && Catch::Contains("from 0 to 1048576"));
  }
  if (saved) ::setenv("TANDEM_CPU_PREFETCH", restore.c_str(), 1);
  else ::unsetenv("TANDEM_CPU_PREFETCH");
}

TEST_CASE("a repacked weight changed in place and prepared again is read anew; unprepared, the mapped rows",
          "[engine][kernels]") {
  if (!isa_level_supported(IsaLevel::avx512)) {
    WARN("SKIPPED: this CPU lacks avx512: no repacked kernels here");
    return;
  }
  std::mt19937 rng(21);
  const int64_t rows = 48, in = 512, tokens = 3;
  Case c(DType::q4_k, rows, in, rng);
  const Case other(DType::q4_k, rows, in, rng);
  const auto x = random_activations(tokens, in, rng);
  const auto reference = make_cpu_backend(1, CpuKernels::fast);  // never prepares: reads the rows
  const auto backend = strips_only(make_cpu_backend(1, CpuKernels::fast));
  std::vector<float> want(static_cast<size_t>(tokens * rows)), got(want.size());
  backend->prepare(WeightGroup::experts, c.weight);
  const int64_t bytes = cpu_backend_repacked_bytes(*backend);
  CHECK(bytes == repacked_bytes(WeightKind::q4_k, rows, in));
  CHECK(cpu_backend_repack_bytes(*backend, WeightGroup::experts, c.weight) == bytes);  // what the engine's memory guard counts
  const Case q5(DType::q5_k, rows, in, rng);
  CHECK(cpu_backend_repack_bytes(*backend, WeightGroup::experts, q5.weight) == 0);  // read in place
  CHECK(cpu_backend_repack_bytes(*make_cpu_backend(1, CpuKernels::reference), WeightGroup::experts, c.weight) == 0);
  backend->prepare(WeightGroup::experts, c.weight);  // the same contents: kept, not copied twice
  CHECK(cpu_backend_repacked_bytes(*backend) == bytes);
  std::copy(other.bytes.begin(), other.bytes.end(), c.bytes.begin());
  backend->prepare(WeightGroup::experts, c.weight);  // changed contents at the same address: copied anew
  CHECK(cpu_backend_repacked_bytes(*backend) == bytes);
  backend->linear(c.weight, x.data(), tokens, got.data());
  reference->linear(c.weight, x.data(), tokens, want.data());
  for (size_t i = 0; i < want.size(); ++i)
    CHECK(std::fabs(got[i] - want[i]) <= 1e-4f * (1.0f + std::fabs(want[i])));
  // A view of other rows at another address is not taken for the prepared one.
  LinearWeight shorter = c.weight;
  shorter.weight.shape = Shape{rows - 16, in};
  shorter.weight.nbytes = c.weight.weight.row_stride_bytes() * static_cast<uint64_t>(rows - 16);
  std::vector<float> part(static_cast<size_t>(tokens * (rows - 16))), part_want(part.size());
  backend->linear(shorter, x.data(), tokens, part.data());
  reference->linear(shorter, x.data(), tokens, part_want.data());
  CHECK(part == part_want);
}

TEST_CASE("fast linear equals the reference linear within the activation rounding bound",
          "[engine][kernels]") {
  std::mt19937 rng(3);
  const auto fast = make_cpu_backend(2, CpuKernels::fast);
  const auto reference = make_cpu_backend(2, CpuKernels::reference);
  for (DType type : kTypes) {
    const WeightKind kind = *weight_kind_for(type);
    const ActFormat format = act_format(kind);
    // 37 rows: not a multiple of the 16-row tile; 70 tokens: 17 groups of four and a remainder; 4096:
    // a prefill pass (inputs narrowed to 256 there, to keep the reference's time down).
    for (const int64_t tokens : {int64_t{1}, int64_t{3}, int64_t{70}, int64_t{4096}}) {
      INFO(dtype_name(type) << " tokens=" << tokens);
      const int64_t rows = 37, in = tokens == 4096 ? 256 : 512;
      Case c(type, rows, in, rng);
      // Q4_K and Q6_K twice: rows as stored, then repacked into strips at preparation.
      const auto repacked_fast = strips_only(make_cpu_backend(2, CpuKernels::fast));
      repacked_fast->prepare(WeightGroup::attention, c.weight);
      CHECK((cpu_backend_repacked_bytes(*repacked_fast) > 0) ==
            ((type == DType::q4_k || type == DType::q6_k) && isa_level_supported(IsaLevel::avx512)));
      std::vector<float> bias(rows);
      for (auto& b : bias) b = std::uniform_real_distribution<float>(-1, 1)(rng);
      if (type == DType::f32) {
        c.weight.bias.dtype = DType::f32;
        c.weight.bias.shape = Shape{rows};
        c.weight.bias.data = bias.data();
        c.weight.bias.nbytes = bias.size() * 4;
      }
      const auto x = random_activations(tokens, in, rng);
      std::vector<float> y(static_cast<size_t>(tokens * rows)), y_ref(y.size());
      std::vector<float> y_repacked(y.size());
      fast->linear(c.weight, x.data(), tokens, y.data());
      repacked_fast->linear(c.weight, x.data(), tokens, y_repacked.data());
      reference->linear(c.weight, x.data(), tokens, y_ref.data());
      // Outputs past their bound, counted (one check per case: 4096 tokens make 150k outputs).
      int64_t past = 0, past_repacked = 0;
      std::string first_past;
      for (int64_t t = 0; t < tokens; ++t) {
        const auto bound = rounding_bound(format, x.data() + t * in, in);
        for (int64_t o = 0; o < rows; ++o) {
          double rounding = 0, magnitude = 0;
          for (int64_t i = 0; i < in; ++i) {
            rounding += std::fabs(c.w_row(o)[i]) * bound[static_cast<size_t>(i)];
            magnitude += std::fabs(c.w_row(o)[i] * x[static_cast<size_t>(t * in + i)]);
          }
          const size_t k = static_cast<size_t>(t * rows + o);
          const double allowed = rounding + 4e-6 * magnitude + 1e-5;
          const bool bad = std::fabs(y[k] - y_ref[k]) > allowed;
          const bool bad_repacked = std::fabs(y_repacked[k] - y_ref[k]) > allowed;
          past += bad ? 1 : 0;
          past_repacked += bad_repacked ? 1 : 0;
          if ((bad || bad_repacked) && first_past.empty())
            first_past = "token " + std::to_string(t) + " row " + std::to_string(o) + ": fast " + std::to_string(y[k]) +
                         ", repacked " + std::to_string(y_repacked[k]) + ", reference " + std::to_string(y_ref[k]) +
                         ", allowed ±" + std::to_string(allowed);
        }
      }
      INFO(first_past);
      CHECK(past == 0);
      CHECK(past_repacked == 0);
    }
  }
}

namespace {

struct Experts {
  std::vector<Case> gate, up, down;
  ExpertWeights weights;
};

Experts make_experts(int64_t count, int64_t hidden, int64_t inter, DType gate_type, DType down_type,
                     std::mt19937& rng) {
  Experts e;
  e.gate.reserve(static_cast<size_t>(count));
  e.up.reserve(static_cast<size_t>(count));
  e.down.reserve(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    e.gate.emplace_back(gate_type, inter, hidden, rng);
    e.up.emplace_back(gate_type, inter, hidden, rng);
    e.down.emplace_back(down_type, hidden, inter, rng);
  }
  for (int64_t i = 0; i < count; ++i) {
    e.weights.gate.push_back(e.gate[static_cast<size_t>(i)].weight);
    e.weights.up.push_back(e.up[static_cast<size_t>(i)].weight);
    e.weights.down.push_back(e.down[static_cast<size_t>(i)].weight);
  }
  return e;
}

double relative_max_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return diff / scale;
}

}  // namespace

TEST_CASE("fast MoE and MLP equal the reference operators", "[engine][kernels][moe]") {
  // Twice: the experts read from their rows, then repacked into strips at preparation.
  const bool repack = GENERATE(false, true);
  INFO((repack ? "repacked" : "rows as stored"));
  std::mt19937 rng(11);
  const auto fast = strips_only(make_cpu_backend(2, CpuKernels::fast));
  const auto reference = make_cpu_backend(2, CpuKernels::reference);
  const int64_t hidden = 256, inter = 512, count = 6, top_k = 2;
  struct Mix {
    DType gate, down;
    // Relative max error against the reference: two activation roundings (x, then the SiLU
    // product, heavy-tailed with random weights) for the integer kernels; float32 order otherwise.
    double tolerance;
  };
  for (const Mix mix : {Mix{DType::q4_k, DType::q6_k, 8e-2}, Mix{DType::iq4_xs, DType::q8_0, 8e-2},
                        Mix{DType::iq4_nl, DType::iq4_xs, 8e-2},
                        Mix{DType::bf16, DType::f32, 1e-5}}) {
    const Experts e = make_experts(count, hidden, inter, mix.gate, mix.down, rng);
    if (repack) {
      const int64_t before = cpu_backend_repacked_bytes(*fast);
      for (const auto* set : {&e.weights.gate, &e.weights.up, &e.weights.down})
        for (const LinearWeight& w : *set) fast->prepare(WeightGroup::experts, w);
      const bool repackable_type = mix.gate == DType::q4_k;
      CHECK((cpu_backend_repacked_bytes(*fast) > before) == (repackable_type && isa_level_supported(IsaLevel::avx512)));
    }
    // 1 token (decode), 5, 150 (tile kernels), and 900 (each expert gets ~300 rows: more than one
    // 256-token block).
    for (const int64_t tokens : {int64_t{1}, int64_t{5}, int64_t{150}, int64_t{900}}) {
      INFO(dtype_name(mix.gate) << "/" << dtype_name(mix.down) << " tokens=" << tokens);
      auto x = random_activations(tokens, hidden, rng);
      for (auto& v : x) v *= 0.1f;
      std::vector<int32_t> ids(static_cast<size_t>(tokens * top_k));
      std::vector<float> weights(ids.size());
      for (int64_t t = 0; t < tokens; ++t) {
        const auto first = static_cast<int32_t>(rng() % count);
        ids[static_cast<size_t>(t * top_k)] = first;
        ids[static_cast<size_t>(t * top_k + 1)] =
            static_cast<int32_t>((first + 1 + rng() % (count - 1)) % count);
        weights[static_cast<size_t>(t * top_k)] = 0.7f;
        weights[static_cast<size_t>(t * top_k + 1)] = 0.3f;
      }
      std::vector<float> y(static_cast<size_t>(tokens * hidden)), y_ref(y.size());
      fast->moe_routed_experts(e.weights, x.data(), tokens, hidden, ids.data(), weights.data(), top_k,
                               y.data());
      reference->moe_routed_experts(e.weights, x.data(), tokens, hidden, ids.data(), weights.data(), top_k,
                                    y_ref.data());
      const double moe_error = relative_max_error(y, y_ref);
      CHECK(moe_error <= mix.tolerance);

      // Tight: the same operator composed from the fast linear (same quantisation of each row), so
      // grouping, the fused SiLU, the (token, slot) rows and the weighted sum must agree to float32.
      // Not at 900 tokens: the tile kernels' float order against the 1-token kernels' flips a SiLU
      // code now and then, and the largest of 230,400 outputs' differences passes 1e-5 (1.4e-5).
      std::vector<float> composed(y.size(), 0.0f), g(static_cast<size_t>(inter)), u(g.size()), d(hidden);
      for (int64_t t = 0; t < (tokens <= 150 ? tokens : 0); ++t)
        for (int64_t s = 0; s < top_k; ++s) {
          const auto ex = static_cast<size_t>(ids[static_cast<size_t>(t * top_k + s)]);
          fast->linear(e.weights.gate[ex], x.data() + t * hidden, 1, g.data());
          fast->linear(e.weights.up[ex], x.data() + t * hidden, 1, u.data());
          for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
          fast->linear(e.weights.down[ex], g.data(), 1, d.data());
          for (int64_t i = 0; i < hidden; ++i)
            composed[static_cast<size_t>(t * hidden + i)] +=
                weights[static_cast<size_t>(t * top_k + s)] * d[static_cast<size_t>(i)];
        }
      if (tokens <= 150) CHECK(relative_max_error(y, composed) <= 1e-5);

      fast->silu_glu_mlp(e.weights.gate[1], e.weights.up[1], e.weights.down[1], x.data(), tokens, y.data());
      reference->silu_glu_mlp(e.weights.gate[1], e.weights.up[1], e.weights.down[1], x.data(), tokens,
                              y_ref.data());
      const double mlp_error = relative_max_error(y, y_ref);
      CHECK(mlp_error <= mix.tolerance);
      WARN(dtype_name(mix.gate) << "/" << dtype_name(mix.down) << " tokens=" << tokens
                                << ": relative max error MoE " << moe_error << ", MLP " << mlp_error);
    }
  }
}

TEST_CASE("perplexity of the bundled trained Q4_K_M model: fast kernels within 0.3 % of the reference",
          "[engine][kernels][perplexity]") {
  const std::string path = test::data_dir() + "/trained-qwen3moe/qwen3moe-q4_k_m.gguf";
  // Code the model was evaluated on (the first 16 KB of the fixtures' eval-dev.txt, bundled so the
  // text does not change when the repository's sources do), long enough that an expert choice
  // flipped by rounding (near-tied router logits) does not move the figure: 8 windows of 256 tokens.
  std::string text;
  {
    std::ifstream in(test::data_dir() + "/trained-qwen3moe/eval-dev-head.txt", std::ios::binary);
    REQUIRE(in);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Fast kernels on Q4_K strips repacked at load (the default), on the mapped rows, and the reference.
  struct Run {
    CpuKernels kernels;
    bool repack;
  };
  double ppl[3] = {};
  const Run runs[] = {{CpuKernels::fast, true}, {CpuKernels::fast, false}, {CpuKernels::reference, false}};
  for (int i = 0; i < 3; ++i) {
    LoadOptions options;
    options.max_sessions = 1;
    options.max_context_tokens = 256;
    options.threads = 2;
    options.cpu_kernels = runs[i].kernels;
    options.cpu_repack = runs[i].repack;
    const auto engine = Engine::load(path, options);
    uint64_t repacked = 0;
    for (const auto& line : engine->memory_report().lines)
      if (line.what == "repacked CPU weights") repacked += line.bytes;
    CHECK((repacked > 0) == (runs[i].repack && std::getenv("TANDEM_CPU_REPACK") == nullptr &&
                             kernels::isa_level_supported(kernels::IsaLevel::avx512)));
    const auto tokens = engine->tokenizer()->encode(text, /*add_special=*/false);
    PerplexityOptions p;
    p.ctx = 256;
    p.max_windows = 8;
    const auto result = evaluate_perplexity(*engine, tokens, p);
    REQUIRE(result.windows == 8);
    ppl[i] = result.ppl;
  }
  WARN("perplexity fast on repacked strips " << ppl[0] << ", fast on the mapped rows " << ppl[1] << ", reference "
                                             << ppl[2]);
  CHECK(ppl[0] > 1.0);
  CHECK(std::fabs(ppl[0] / ppl[2] - 1.0) <= 0.003);
  CHECK(std::fabs(ppl[1] / ppl[2] - 1.0) <= 0.003);
}

TEST_CASE("fast MLA products with kv_b equal the reference: absorbed queries (f16 key rows), expanded values",
          "[engine][kernels][mla]") {
  std::mt19937 rng(11);
  const auto fast = make_cpu_backend(2, CpuKernels::fast);
  const auto reference = make_cpu_backend(2, CpuKernels::reference);
  MlaShape s;
  s.heads = 3, s.nope = 32, s.rope = 16, s.v = 48, s.kv_lora = 256;
  for (DType type : {DType::q4_k, DType::q6_k, DType::q5_0, DType::q8_0, DType::bf16}) {
    const ActFormat format = act_format(*weight_kind_for(type));
    const Case kv_b(type, s.heads * (s.nope + s.v), s.kv_lora, rng);
    // 1 and 5 tokens: the dot kernels; 20: the tile kernels where the type has them.
    for (const int64_t tokens : {int64_t{1}, int64_t{5}, int64_t{20}}) {
      INFO(dtype_name(type) << " tokens=" << tokens);
      const auto q = random_activations(tokens * s.heads, s.nope + s.rope, rng);
      std::vector<float> latent(static_cast<size_t>(tokens * s.heads * s.kv_lora)), latent_ref(latent.size());
      fast->mla_absorb_query(kv_b.weight, s, q.data(), tokens, latent.data());
      reference->mla_absorb_query(kv_b.weight, s, q.data(), tokens, latent_ref.data());
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t h = 0; h < s.heads; ++h)
          for (int64_t c = 0; c < s.kv_lora; ++c) {
            double magnitude = 0;  // the key rows are rounded to f16 (relative 2^-11)
            for (int64_t r = 0; r < s.nope; ++r)
              magnitude += std::fabs(kv_b.w_row(h * (s.nope + s.v) + r)[c] *
                                     q[static_cast<size_t>((t * s.heads + h) * (s.nope + s.rope) + r)]);
            const auto k = static_cast<size_t>((t * s.heads + h) * s.kv_lora + c);
            CHECK(std::fabs(latent[k] - latent_ref[k]) <= 5e-4 * magnitude + 1e-6);
          }

      const auto attended = random_activations(tokens * s.heads, s.kv_lora, rng);
      std::vector<float> out(static_cast<size_t>(tokens * s.heads * s.v)), out_ref(out.size());
      fast->mla_expand_values(kv_b.weight, s, attended.data(), tokens, out.data());
      reference->mla_expand_values(kv_b.weight, s, attended.data(), tokens, out_ref.data());
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t h = 0; h < s.heads; ++h) {
          const float* a = attended.data() + (t * s.heads + h) * s.kv_lora;
          const auto bound = rounding_bound(format, a, s.kv_lora);
          for (int64_t o = 0; o < s.v; ++o) {
            const float* w = kv_b.w_row(h * (s.nope + s.v) + s.nope + o);
            double rounding = 0, magnitude = 0;
            for (int64_t i = 0; i < s.kv_lora; ++i) {
              rounding += std::fabs(w[i]) * bound[static_cast<size_t>(i)];
              magnitude += std::fabs(w[i] * a[i]);
            }
            const auto k = static_cast<size_t>((t * s.heads + h) * s.v + o);
            CHECK(std::fabs(out[k] - out_ref[k]) <= rounding + 4e-6 * magnitude + 1e-5);
          }
        }
    }
  }
}
