// Reference dequantisation: bit-exact against gguf-py's numpy output where it exists; for the other
// types, blocks are packed in the test from chosen quants by the layout the spec describes and must
// come back as d * q (+ m); real quantised GGUFs must approximate their F32 weights.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "support/fixtures.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/formats/gguf.hpp"
#include "tandem/formats/safetensors.hpp"

using namespace tandem;
namespace fs = std::filesystem;

namespace {

uint32_t bits_of(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

std::vector<float> dequantize_all(const TensorView& v) {
  std::vector<float> out(static_cast<size_t>(v.shape.elements()));
  for (int64_t r = 0; r < v.shape.rows(); ++r) {
    dequantize_row(v.dtype, v.row_ptr(r), out.data() + r * v.shape.back(), v.shape.back());
  }
  return out;
}

void put_f16(uint8_t* p, float f) {
  const uint16_t h = f32_to_f16(f);
  std::memcpy(p, &h, 2);
}

// Halves whose value we know exactly, so the block scales are known without our converter.
constexpr float kD = 0.03125f, kM = -0.5f, kDmin = 0.0078125f;

std::vector<int> random_quants(std::mt19937& rng, int n, int lo, int hi) {
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int> q(static_cast<size_t>(n));
  for (int& x : q) x = dist(rng);
  return q;
}

}  // namespace

TEST_CASE("dequantize: bit-exact against gguf-py for every type in quant-blocks") {
  const auto blocks = SafetensorsModel::open(test::data_dir() + "/quant-blocks.safetensors");
  const std::pair<const char*, DType> types[] = {
      {"Q4_K", DType::q4_k}, {"Q5_K", DType::q5_k}, {"Q6_K", DType::q6_k}, {"Q8_0", DType::q8_0}, {"IQ4_XS", DType::iq4_xs}};
  for (const auto& [name, type] : types) {
    INFO(name);
    const auto& raw = blocks.tensors().require(std::string(name) + ".raw").view;
    const auto& values = blocks.tensors().require(std::string(name) + ".values").view;
    REQUIRE(raw.shape[0] == 8);
    REQUIRE(raw.shape[1] == static_cast<int64_t>(*row_bytes(type, 256)));
    int mismatches = 0;
    for (int64_t r = 0; r < 8; ++r) {
      float out[256];
      dequantize_row(type, raw.row_ptr(r), out, 256);
      const auto* expected = reinterpret_cast<const float*>(values.row_ptr(r));
      for (int i = 0; i < 256; ++i) mismatches += bits_of(out[i]) != bits_of(expected[i]);
    }
    CHECK(mismatches == 0);
  }
}

TEST_CASE("dequantize: f16, bf16 and fp8 converters") {
  // Every finite half, against the IEEE formula (-1)^s * 2^(e-15) * (1 + m/1024).
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    if (e == 31) {
      CHECK((m ? std::isnan(f) : std::isinf(f)));
      continue;
    }
    const double mag = e ? std::ldexp(1.0 + m / 1024.0, e - 15) : std::ldexp(m / 1024.0, -14);
    const double expected = (h & 0x8000) ? -mag : mag;
    if (f != expected || std::signbit(f) != std::signbit(expected)) FAIL("half " << h);
    if (f32_to_f16(f) != h) FAIL("round trip of half " << h);
  }
  // Rounding to nearest even at the midpoint between two halves.
  CHECK(f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);              // tie, even below
  CHECK(f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);          // tie, even above
  CHECK(f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);   // just past the tie
  CHECK(f32_to_f16(65520.0f) == 0x7c00);
  CHECK(f32_to_f16(65519.0f) == 0x7bff);
  CHECK(f32_to_f16(0x1p-25f) == 0x0000);                     // tie to even zero
  CHECK(f32_to_f16(0x1p-25f + 0x1p-35f) == 0x0001);
  CHECK(bf16_to_f32(0x3f80) == 1.0f);
  CHECK(bf16_to_f32(0xc0a0) == -5.0f);
  CHECK(f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80);              // tie, even below
  CHECK(f32_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82);          // tie, even above
  CHECK(std::isnan(bf16_to_f32(f32_to_bf16(std::nanf("")))));
  // e4m3fn: values from the OCP FP8 spec table.
  CHECK(f8_e4m3_to_f32(0x38) == 1.0f);
  CHECK(f8_e4m3_to_f32(0x7e) == 448.0f);
  CHECK(f8_e4m3_to_f32(0xfe) == -448.0f);
  CHECK(f8_e4m3_to_f32(0x01) == 0x1p-9f);
  CHECK(f8_e4m3_to_f32(0x08) == 0x1p-6f);
  CHECK(f8_e4m3_to_f32(0x3c) == 1.5f);
  CHECK(std::isnan(f8_e4m3_to_f32(0x7f)));
  CHECK(std::isnan(f8_e4m3_to_f32(0xff)));
  const uint8_t fp8[3] = {0x38, 0xb8, 0x40};
  float out[3];
  dequantize_row(DType::f8_e4m3, fp8, out, 3);
  CHECK((out[0] == 1.0f && out[1] == -1.0f && out[2] == 2.0f));
}

TEST_CASE("dequantize: 32-value block types packed by the spec") {
  std::mt19937 rng(42);
  SECTION("q4_0 and q4_1: value j in the low nibble of byte j, value j+16 in its high nibble") {
    const auto q = random_quants(rng, 32, 0, 15);
    uint8_t b0[18] = {}, b1[20] = {};
    put_f16(b0, kD);
    put_f16(b1, kD);
    put_f16(b1 + 2, kM);
    for (int j = 0; j < 16; ++j) {
      b0[2 + j] = static_cast<uint8_t>(q[j] | (q[j + 16] << 4));
      b1[4 + j] = b0[2 + j];
    }
    float y0[32], y1[32];
    dequantize_row(DType::q4_0, b0, y0, 32);
    dequantize_row(DType::q4_1, b1, y1, 32);
    for (int j = 0; j < 32; ++j) {
      CHECK(y0[j] == static_cast<float>(q[j] - 8) * kD);
      CHECK(y1[j] == static_cast<float>(q[j]) * kD + kM);
    }
  }
  SECTION("q5_0 and q5_1: the fifth bit of value j is bit j of the 32-bit qh") {
    const auto q = random_quants(rng, 32, 0, 31);
    uint8_t b0[22] = {}, b1[24] = {};
    put_f16(b0, kD);
    put_f16(b1, kD);
    put_f16(b1 + 2, kM);
    uint32_t qh = 0;
    for (int j = 0; j < 32; ++j) qh |= static_cast<uint32_t>(q[j] >> 4) << j;
    std::memcpy(b0 + 2, &qh, 4);
    std::memcpy(b1 + 4, &qh, 4);
    for (int j = 0; j < 16; ++j) {
      b0[6 + j] = static_cast<uint8_t>((q[j] & 15) | ((q[j + 16] & 15) << 4));
      b1[8 + j] = b0[6 + j];
    }
    float y0[32], y1[32];
    dequantize_row(DType::q5_0, b0, y0, 32);
    dequantize_row(DType::q5_1, b1, y1, 32);
    for (int j = 0; j < 32; ++j) {
      CHECK(y0[j] == static_cast<float>(q[j] - 16) * kD);
      CHECK(y1[j] == static_cast<float>(q[j]) * kD + kM);
    }
  }
  SECTION("iq4_nl: nibbles index the non-linear table") {
    const int table[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    const auto q = random_quants(rng, 64, 0, 15);
    uint8_t b[36] = {};
    for (int blk = 0; blk < 2; ++blk) {
      put_f16(b + 18 * blk, blk ? kM : kD);
      for (int j = 0; j < 16; ++j) b[18 * blk + 2 + j] = static_cast<uint8_t>(q[32 * blk + j] | (q[32 * blk + j + 16] << 4));
    }
    float y[64];
    dequantize_row(DType::iq4_nl, b, y, 64);
    for (int i = 0; i < 64; ++i) CHECK(y[i] == (i < 32 ? kD : kM) * static_cast<float>(table[q[i]]));
  }
  CHECK_THROWS_AS(dequantize_row(DType::q8_0, nullptr, nullptr, 31), Error);
  CHECK_THROWS_AS(dequantize_row(DType::i32, nullptr, nullptr, 0), Error);
}

TEST_CASE("dequantize: q2_k and q3_k packed by the spec") {
  std::mt19937 rng(7);
  // Both: value i = 128*h + 32*p + l takes bits 2p..2p+1 of byte 32*h + l; sub-block = i / 16.
  SECTION("q2_k: 4-bit scale and min per 16 values") {
    const auto q = random_quants(rng, 256, 0, 3);
    const auto sc = random_quants(rng, 16, 0, 15), mn = random_quants(rng, 16, 0, 15);
    uint8_t b[84] = {};
    for (int s = 0; s < 16; ++s) b[s] = static_cast<uint8_t>(sc[s] | (mn[s] << 4));
    for (int i = 0; i < 256; ++i) b[16 + 32 * (i / 128) + i % 32] |= static_cast<uint8_t>(q[i] << (2 * ((i % 128) / 32)));
    put_f16(b + 80, kD);
    put_f16(b + 82, kDmin);
    float y[256];
    dequantize_row(DType::q2_k, b, y, 256);
    for (int i = 0; i < 256; ++i) {
      CHECK(y[i] == kD * static_cast<float>(sc[i / 16]) * static_cast<float>(q[i]) - kDmin * static_cast<float>(mn[i / 16]));
    }
  }
  SECTION("q3_k: a high bit in hmask (clear means -4), signed 6-bit scales") {
    const auto q = random_quants(rng, 256, -4, 3);
    const auto sc = random_quants(rng, 16, -32, 31);
    uint8_t b[110] = {};
    for (int i = 0; i < 256; ++i) {
      const int stored = q[i] + 4;  // 0..7: low two bits and the high bit
      b[32 + 32 * (i / 128) + i % 32] |= static_cast<uint8_t>((stored & 3) << (2 * ((i % 128) / 32)));
      if (stored & 4) b[i % 32] |= static_cast<uint8_t>(1 << (i / 32));
    }
    // Scale s (stored s + 32, 6 bits): low nibble in byte s % 8 (high half for s >= 8), top two
    // bits in byte 8 + s % 4 at bit 2 * (s / 4).
    for (int s = 0; s < 16; ++s) {
      const int u = sc[s] + 32;
      b[96 + s % 8] |= static_cast<uint8_t>((u & 15) << (s < 8 ? 0 : 4));
      b[96 + 8 + s % 4] |= static_cast<uint8_t>((u >> 4) << (2 * (s / 4)));
    }
    put_f16(b + 108, kD);
    float y[256];
    dequantize_row(DType::q3_k, b, y, 256);
    for (int i = 0; i < 256; ++i) CHECK(y[i] == kD * static_cast<float>(sc[i / 16]) * static_cast<float>(q[i]));
  }
}

TEST_CASE("dequantize: quantised fixture GGUFs approximate their F32 weights") {
  TANDEM_REQUIRE_FIXTURES(fx);
  const std::pair<const char*, const char*> names[] = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"},
      {"blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight"},
      {"output.weight", "lm_head.weight"},
  };
  int compared = 0;
  double worst = 0;
  for (const char* model : {"qwen3moe", "deepseekv3"}) {
    const fs::path dir = fs::path(fx) / "small" / model;
    const auto st = SafetensorsModel::open(dir.string());
    for (const char* quant : {"q4_k_m", "q5_k_m", "q6_k", "q8_0", "iq4_xs"}) {
      const auto g = GgufFile::open((dir / (std::string(model) + "-" + quant + ".gguf")).string());
      auto compare = [&](const TensorView& gv, const TensorView& hv, const std::string& what) {
        INFO(model << " " << quant << " " << what << " " << dtype_name(gv.dtype));
        REQUIRE(gv.shape == hv.shape);
        const auto deq = dequantize_all(gv);
        const auto* ref = static_cast<const float*>(hv.data);
        double err = 0, norm = 0;
        for (size_t i = 0; i < deq.size(); ++i) {
          err += (deq[i] - ref[i]) * static_cast<double>(deq[i] - ref[i]);
          norm += ref[i] * static_cast<double>(ref[i]);
        }
        const double rel = std::sqrt(err / norm);
        // Expected error of a b-bit uniform quantiser on Gaussian weights is roughly 2^-b * 3 (RMS).
        const double bits_per_weight = 8.0 * static_cast<double>(dtype_traits(gv.dtype).block_bytes) /
                                       static_cast<double>(dtype_traits(gv.dtype).block_elems);
        // Measured: 4.5 bpw 7.1-7.7%, 5.5 bpw 3.6%, 6.6 bpw 1.75%, 8.5 bpw 0.54%.
        CHECK(rel < (bits_per_weight < 5 ? 0.09 : bits_per_weight < 6 ? 0.045 : bits_per_weight < 7 ? 0.025 : 0.008));
        if (gv.dtype != DType::f32) worst = std::max(worst, rel);
        ++compared;
      };
      for (const auto& [gguf_name, hf_name] : names) {
        const auto* gt = g.tensors().find(gguf_name);
        const auto* ht = st.tensors().find(hf_name);
        if (gt && ht) compare(gt->view, ht->view, gguf_name);
      }
      // A merged expert tensor: its last expert against the HF per-expert weight.
      const auto& exps = g.tensors().require("blk.1.ffn_down_exps.weight").view;
      const int64_t e = exps.shape[0] - 1;
      compare(exps.slice_outer(e), st.tensors().require("model.layers.1.mlp.experts." + std::to_string(e) + ".down_proj.weight").view,
              "blk.1.ffn_down_exps[last]");
    }
  }
  WARN("compared " << compared << " quantised tensors with their F32 weights; worst relative RMS error " << worst);
  CHECK(compared >= 30);
}

TEST_CASE("dequantize: DeepSeek FP8 weights with 128x128 block scales approximate the F32 model") {
  TANDEM_REQUIRE_FIXTURES(fx);
  // deepseekv3-fp8 is deepseekv3's F32 weights quantised to e4m3 with one scale per 128x128 block.
  const auto fp8 = SafetensorsModel::open(fx + "/tiny/deepseekv3-fp8");
  const auto f32 = SafetensorsModel::open(fx + "/tiny/deepseekv3");
  int compared = 0;
  double worst = 0;
  for (const auto& e : fp8.tensors().entries()) {
    if (e.view.dtype != DType::f8_e4m3) continue;
    INFO(e.name);
    const auto& scale = fp8.tensors().require(e.name + "_scale_inv").view;
    const int64_t rows = e.view.shape[0], cols = e.view.shape[1];
    REQUIRE(scale.dtype == DType::f32);
    REQUIRE(scale.shape == Shape{(rows + 127) / 128, (cols + 127) / 128});
    const auto& ref = f32.tensors().require(e.name).view;
    REQUIRE(ref.shape == e.view.shape);
    std::vector<float> row(static_cast<size_t>(cols));
    double err = 0, norm = 0;
    for (int64_t r = 0; r < rows; ++r) {
      dequantize_row(DType::f8_e4m3, e.view.row_ptr(r), row.data(), cols);
      const auto* s = reinterpret_cast<const float*>(scale.row_ptr(r / 128));
      const auto* want = reinterpret_cast<const float*>(ref.row_ptr(r));
      for (int64_t c = 0; c < cols; ++c) {
        const double d = row[static_cast<size_t>(c)] * s[c / 128] - want[c];
        err += d * d;
        norm += static_cast<double>(want[c]) * want[c];
      }
    }
    const double rel = std::sqrt(err / norm);
    CHECK(rel < 0.04);  // e4m3 has 3 mantissa bits: ~2.5% RMS
    worst = std::max(worst, rel);
    ++compared;
  }
  WARN("compared " << compared << " FP8 tensors with the F32 model; worst relative RMS error " << worst);
  CHECK(compared >= 10);
}
