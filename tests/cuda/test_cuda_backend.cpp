// Every op of the CUDA backend against the CPU backend (the reference operators of src/ops), at
// several shapes and for every stored type the kernels read. Runs on the GPU machine; skips,
// saying so, without a GPU (where it checks the clear error instead).
#include <catch2/catch.hpp>

#include <string>
#include <tuple>
#include <utility>

#include "cuda/cuda_test_support.hpp"
#include "support/fixtures.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cuda_backend.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/safetensors.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/model/model_config.hpp"
#include "tandem/ops/linear.hpp"
#include "tandem/ops/moe.hpp"
#include "tandem/ops/rope.hpp"

using namespace tandem;
using test::have_gpu;
using test::random_floats;
using test::random_weight;
using test::relative_error;

namespace {

struct Backends {
  std::unique_ptr<Backend> cpu = make_cpu_backend(2, CpuKernels::reference);  // the reference operators
  std::unique_ptr<Backend> gpu = make_cuda_backend(0);
};

std::string type_name(DType t) { return std::string(dtype_name(t)); }

}  // namespace

TEST_CASE("cuda backend: asking for a GPU that is not there is a clear error", "[cuda]") {
  const int count = cuda::device_count();
  try {
    (void)make_cuda_backend(count);
    FAIL("make_cuda_backend(" << count << ") did not throw");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::invalid_argument);
    const std::string message = e.what();
    CHECK(message.find("cuda:" + std::to_string(count)) != std::string::npos);
    if (count == 0)
      CHECK(message.find("no CUDA device") != std::string::npos);
    else
      CHECK(message.find(std::to_string(count) + " CUDA device") != std::string::npos);
  }
}

TEST_CASE("cuda backend: a weight type without a kernel is a clear error, before any upload", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  std::vector<uint8_t> bytes(static_cast<size_t>(*row_bytes(DType::q2_k, 256)) * 4);
  LinearWeight w;
  w.weight.dtype = DType::q2_k;
  w.weight.shape = Shape{4, 256};
  w.weight.data = bytes.data();
  w.weight.nbytes = bytes.size();
  std::vector<float> x(256), y(4);
  try {
    b.gpu->linear(w, x.data(), 1, y.data());
    FAIL("a q2_k weight did not throw");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(std::string(e.what()).find("q2_k") != std::string::npos);
    CHECK(std::string(e.what()).find("--placement") != std::string::npos);
  }
  CHECK(cuda_backend_weight_bytes(*b.gpu) == 0);
  CHECK_THROWS_AS(cuda_backend_upload(*b.gpu, w), Error);
}

TEST_CASE("cuda dequantisation equals the gguf-py reference bit for bit", "[cuda]") {
  if (!have_gpu()) return;
  const auto blocks = SafetensorsModel::open(test::data_dir() + "/quant-blocks.safetensors");
  cuda::Stream stream(0);
  for (const auto& [name, type] : {std::pair{"Q4_K", DType::q4_k}, std::pair{"Q5_K", DType::q5_k},
                                   std::pair{"Q6_K", DType::q6_k}, std::pair{"Q8_0", DType::q8_0},
                                   std::pair{"IQ4_XS", DType::iq4_xs}}) {
    const TensorView raw = blocks.tensors().require(std::string(name) + ".raw").view;
    const TensorView values = blocks.tensors().require(std::string(name) + ".values").view;
    const int64_t rows = raw.shape[0], width = values.shape.back();
    cuda::DeviceBuffer d_raw(0, raw.nbytes), d_out(0, static_cast<size_t>(rows * width) * 4);
    d_raw.upload(raw.data, raw.nbytes);
    cuda::dequantize_rows(stream, cuda::DeviceWeight{type, d_raw.data(), rows, width}, 0, rows,
                          static_cast<float*>(d_out.data()));
    stream.synchronize();
    std::vector<float> got(static_cast<size_t>(rows * width));
    d_out.download(got.data(), got.size() * 4);
    const auto* expected = static_cast<const float*>(values.data);
    int64_t mismatches = 0;
    for (size_t i = 0; i < got.size(); ++i) mismatches += got[i] != expected[i];
    INFO(name);
    CHECK(mismatches == 0);
  }
}

TEST_CASE("cuda linear equals the CPU reference for every stored type", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  uint32_t seed = 100;
  for (DType t : test::kCudaWeightTypes) {
    const bool plain = !is_quantised(t);
    for (auto [out, in] : {std::pair<int64_t, int64_t>{96, 512}, {130, 768}, {7, 256}}) {
      if (plain && in == 256) in = 300;  // a width that is not a whole number of 32-value chunks
      const auto w = random_weight(t, out, in, ++seed, /*with_bias=*/t == DType::f32);
      b.gpu = make_cuda_backend(0);  // uploads are cached by host address, which a freed weight hands on
      for (int64_t rows : {1, 5, 17}) {
        const auto x = random_floats(static_cast<size_t>(rows * in), ++seed);
        std::vector<float> expected(static_cast<size_t>(rows * out)), got(expected.size());
        b.cpu->linear(w.w, x.data(), rows, expected.data());
        b.gpu->linear(w.w, x.data(), rows, got.data());
        INFO(type_name(t) << " [" << out << ", " << in << "] rows " << rows);
        CHECK(relative_error(got, expected) < 2e-5);
      }
    }
  }
}

TEST_CASE("cuda embedding equals the CPU lookup for every stored type", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  for (DType t : test::kCudaWeightTypes) {
    const int64_t vocab = 40, width = t == DType::f32 || t == DType::bf16 ? 200 : 512;
    const auto table = random_weight(t, vocab, width, 7);
    b.gpu = make_cuda_backend(0);  // uploads are cached by host address, which a freed weight hands on
    TensorView view = table.w.weight;
    const std::vector<int32_t> ids = {0, 39, 5, 5, 17, 23, 1};
    const auto n = static_cast<int64_t>(ids.size());
    std::vector<float> expected(static_cast<size_t>(n * width)), got(expected.size());
    b.cpu->embedding(view, ids.data(), n, expected.data());
    b.gpu->embedding(view, ids.data(), n, got.data());
    INFO(type_name(t));
    CHECK(got == expected);
  }
}

TEST_CASE("cuda rms_norm equals the CPU reference, strided and in place", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  for (auto [rows, dim, stride] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 64}, {7, 100, 130}, {33, 512, 512}}) {
    const auto x = random_floats(static_cast<size_t>(rows * stride), 3);
    const auto w = random_floats(static_cast<size_t>(dim), 4);
    std::vector<float> expected(x.size(), -1.f), got(x.size(), -1.f);
    b.cpu->rms_norm(x.data(), w.data(), rows, dim, stride, 1e-6, expected.data());
    b.gpu->rms_norm(x.data(), w.data(), rows, dim, stride, 1e-6, got.data());
    INFO("rows " << rows << " dim " << dim << " stride " << stride);
    CHECK(relative_error(got, expected) < 1e-6);
    std::vector<float> in_place_cpu = x, in_place_gpu = x;
    b.cpu->rms_norm(in_place_cpu.data(), w.data(), rows, dim, stride, 1e-6, in_place_cpu.data());
    b.gpu->rms_norm(in_place_gpu.data(), w.data(), rows, dim, stride, 1e-6, in_place_gpu.data());
    CHECK(relative_error(in_place_gpu, in_place_cpu) < 1e-6);
  }
}

TEST_CASE("cuda rope equals RotaryEmbedding::apply (neox, interleaved, YaRN)", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  for (RopeLayout layout : {RopeLayout::neox, RopeLayout::interleaved})
    for (bool yarn : {false, true}) {
      ModelConfig c;
      c.rope_theta = 10000.0;
      c.rope_layout = layout;
      c.max_position_embeddings = 4096;
      if (yarn) {
        c.rope_scaling.type = RopeScalingType::yarn;
        c.rope_scaling.factor = 4.0;
        c.rope_scaling.original_max_position_embeddings = 1024;
        c.rope_scaling.mscale = 1.0;
        c.rope_scaling.mscale_all_dim = 1.0;
      }
      const RotaryEmbedding rope(c, 32);
      const int64_t rows = 9, heads = 3, head_stride = 48, row_stride = heads * head_stride + 5;
      const std::vector<int64_t> positions = {0, 1, 2, 17, 100, 511, 1023, 2047, 3999};
      auto expected = random_floats(static_cast<size_t>(rows * row_stride), 5);
      auto got = expected;
      b.cpu->rope(rope, expected.data(), rows, row_stride, heads, head_stride, positions.data());
      b.gpu->rope(rope, got.data(), rows, row_stride, heads, head_stride, positions.data());
      INFO((layout == RopeLayout::neox ? "neox" : "interleaved") << (yarn ? " yarn" : ""));
      CHECK(relative_error(got, expected) < 1e-6);
    }
}

namespace {

// Two sequences in one pool with every cached row random; a batch of a 3-token chunk of the first
// and one decode token of the second.
struct AttentionSetup {
  KvPool pool;
  BlockTable a, b;
  std::vector<int64_t> positions = {37, 38, 39, 22};
  std::vector<const BlockTable*> tables;

  AttentionSetup(KvLayout layout, KvType type, int64_t width, int64_t layer)
      : pool(KvPoolSpec{layout, 2, width, 16, 12, Device::cpu(), type}) {
    a.reserve(pool, 40);
    b.reserve(pool, 23);
    const int64_t planes = pool.planes(), row = pool.row_width();
    uint32_t seed = 50;
    for (BlockTable* t : {&a, &b})
      for (int64_t p = 0; p < t->capacity_tokens(pool); ++p)
        for (int64_t plane = 0; plane < planes; ++plane)
          t->write_row(pool, layer, plane, p, random_floats(static_cast<size_t>(row), ++seed).data());
    tables = {&a, &a, &a, &b};
  }
  AttentionBatch batch() const { return AttentionBatch{4, positions.data(), tables.data()}; }
};

}  // namespace

TEST_CASE("cuda GQA attention over the paged pool equals the CPU reference (f32, f16, bf16 KV)", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16}) {
    const int64_t heads = 8, kv_heads = 2, head_dim = 64;
    AttentionSetup s(KvLayout::gqa, type, 2 * kv_heads * head_dim, 1);
    const auto q = random_floats(static_cast<size_t>(4 * heads * head_dim), 9);
    std::vector<float> expected(q.size()), got(q.size());
    b.cpu->gqa_attention(s.pool, 1, s.batch(), q.data(), heads, kv_heads, head_dim, 0.125f, expected.data());
    b.gpu->gqa_attention(s.pool, 1, s.batch(), q.data(), heads, kv_heads, head_dim, 0.125f, got.data());
    INFO(kv_type_name(type));
    CHECK(relative_error(got, expected) < 1e-5);
  }
}

TEST_CASE("cuda MLA attention over the latent cache equals the CPU reference", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16}) {
    const int64_t heads = 4, kv_lora = 64, rope_dim = 16;
    AttentionSetup s(KvLayout::mla_latent, type, kv_lora + rope_dim, 0);
    const auto ql = random_floats(static_cast<size_t>(4 * heads * kv_lora), 10);
    const auto qr = random_floats(static_cast<size_t>(4 * heads * rope_dim), 11);
    std::vector<float> expected(ql.size()), got(ql.size());
    b.cpu->mla_attention(s.pool, 0, s.batch(), ql.data(), qr.data(), heads, kv_lora, rope_dim, 0.1f,
                         expected.data());
    b.gpu->mla_attention(s.pool, 0, s.batch(), ql.data(), qr.data(), heads, kv_lora, rope_dim, 0.1f, got.data());
    INFO(kv_type_name(type));
    CHECK(relative_error(got, expected) < 1e-5);
  }
}

TEST_CASE("cuda MLA absorption and value expansion equal the CPU reference", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  const MlaShape shape{4, 16, 8, 24, 64};
  for (DType t : {DType::f32, DType::bf16, DType::q8_0, DType::f8_e4m3}) {
    const auto kv_b = random_weight(t, shape.heads * (shape.nope + shape.v), shape.kv_lora, 21);
    b.gpu = make_cuda_backend(0);  // uploads are cached by host address, which a freed weight hands on
    for (int64_t tokens : {1, 6}) {
      const auto q = random_floats(static_cast<size_t>(tokens * shape.heads * (shape.nope + shape.rope)), 22);
      std::vector<float> expected(static_cast<size_t>(tokens * shape.heads * shape.kv_lora)), got(expected.size());
      b.cpu->mla_absorb_query(kv_b.w, shape, q.data(), tokens, expected.data());
      b.gpu->mla_absorb_query(kv_b.w, shape, q.data(), tokens, got.data());
      INFO(type_name(t) << " tokens " << tokens);
      CHECK(relative_error(got, expected) < 1e-5);
      std::vector<float> out_cpu(static_cast<size_t>(tokens * shape.heads * shape.v)), out_gpu(out_cpu.size());
      b.cpu->mla_expand_values(kv_b.w, shape, expected.data(), tokens, out_cpu.data());
      b.gpu->mla_expand_values(kv_b.w, shape, expected.data(), tokens, out_gpu.data());
      CHECK(relative_error(out_gpu, out_cpu) < 1e-5);
    }
  }
}

TEST_CASE("cuda SiLU-GLU MLP and routed experts equal the CPU reference", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  const int64_t hidden = 256, inter = 96, experts = 4, top_k = 2, max_tokens = 16;
  FeedForwardWorkspace ws(max_tokens, hidden, inter, top_k, experts);
  for (DType t : {DType::f32, DType::bf16, DType::q8_0}) {
    const auto gate = random_weight(t, inter, hidden, 31), up = random_weight(t, inter, hidden, 32),
               down = random_weight(t, hidden, inter, 33);
    b.gpu = make_cuda_backend(0);  // uploads are cached by host address, which a freed weight hands on
    for (int64_t tokens : {1, 6}) {
      const auto x = random_floats(static_cast<size_t>(tokens * hidden), 34);
      std::vector<float> expected(x.size()), got(x.size());
      b.cpu->silu_glu_mlp(gate.w, up.w, down.w, x.data(), tokens, ws, expected.data());
      b.gpu->silu_glu_mlp(gate.w, up.w, down.w, x.data(), tokens, ws, got.data());
      INFO(type_name(t) << " tokens " << tokens);
      CHECK(relative_error(got, expected) < 2e-5);
    }
    std::vector<test::OwnedWeight> owned;
    ExpertWeights ew;
    for (int64_t e = 0; e < experts; ++e) {
      owned.push_back(random_weight(t, inter, hidden, 40 + 3 * uint32_t(e)));
      owned.push_back(random_weight(t, inter, hidden, 41 + 3 * uint32_t(e)));
      owned.push_back(random_weight(t, hidden, inter, 42 + 3 * uint32_t(e)));
    }
    for (int64_t e = 0; e < experts; ++e) {
      ew.gate.push_back(owned[size_t(3 * e)].w);
      ew.up.push_back(owned[size_t(3 * e + 1)].w);
      ew.down.push_back(owned[size_t(3 * e + 2)].w);
    }
    const int64_t tokens = 6;
    const std::vector<int32_t> ids = {0, 1, 2, 0, 3, 1, 1, 2, 0, 3, 2, 3};  // expert 0..3, none twice per token
    const auto weights = random_floats(static_cast<size_t>(tokens * top_k), 43);
    const auto x = random_floats(static_cast<size_t>(tokens * hidden), 44);
    std::vector<float> expected(x.size()), got(x.size());
    b.cpu->moe_routed_experts(ew, x.data(), tokens, hidden, ids.data(), weights.data(), top_k, ws, expected.data());
    b.gpu->moe_routed_experts(ew, x.data(), tokens, hidden, ids.data(), weights.data(), top_k, ws, got.data());
    INFO(type_name(t) << " routed experts");
    CHECK(relative_error(got, expected) < 2e-5);
  }
}

TEST_CASE("cuda residual add and SiLU-GLU kernels", "[cuda]") {
  if (!have_gpu()) return;
  const int64_t n = 1000;
  const auto a = random_floats(size_t(n), 60), c = random_floats(size_t(n), 61);
  cuda::Stream stream(0);
  cuda::DeviceBuffer da(0, size_t(n) * 4), dc(0, size_t(n) * 4);
  da.upload(a.data(), size_t(n) * 4);
  dc.upload(c.data(), size_t(n) * 4);
  cuda::add(stream, static_cast<float*>(da.data()), static_cast<float*>(dc.data()), n, static_cast<float*>(da.data()));
  stream.synchronize();
  std::vector<float> sum(static_cast<size_t>(n));
  da.download(sum.data(), sum.size() * 4);
  for (size_t i = 0; i < sum.size(); ++i) CHECK(sum[i] == a[i] + c[i]);
}
