// Every op of the CUDA backend against the CPU backend (its reference operators, src/backend/cpu/reference),
// at several shapes and for every stored type the kernels read. Runs on the GPU machine; skips, saying so,
// without a GPU (where it checks the clear error instead).
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <utility>

#include "cuda/cuda_test_support.hpp"
#include "support/fixtures.hpp"
#include "tandem/backend/backend.hpp"
#include "tandem/backend/cpu/reference/expert_cache_split.hpp"
#include "tandem/backend/cpu/reference/linear.hpp"
#include "tandem/backend/cpu/reference/moe.hpp"
#include "tandem/backend/cpu/reference/rope.hpp"
#include "tandem/backend/cuda_backend.hpp"
#include "tandem/backend/rope_tables.hpp"
#include "tandem/cuda/blas_gemm.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/cuda/moe_blas.hpp"
#include "tandem/error.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/formats/safetensors.hpp"
#include "tandem/kv/kv_pool.hpp"
#include "tandem/model/model_config.hpp"

using namespace tandem;
using test::have_gpu;
using test::random_floats;
using test::random_weight;
using test::get;
using test::put;
using test::relative_error;

namespace {

struct Backends {
  std::unique_ptr<Backend> cpu = make_cpu_backend(2, CpuKernels::reference);  // the reference operators
  std::unique_ptr<Backend> gpu = make_cuda_backend(0);
};

std::string type_name(DType t) { return std::string(dtype_name(t)); }

// y = w · x on backend `be` (x: rows × w's inputs), back on the host.
std::vector<float> linear_on(Backend& be, const LinearWeight& w, const std::vector<float>& x, int64_t rows) {
  DeviceBuffer dx = put(be, x), dy = be.allocate(static_cast<size_t>(rows * w.out_features()) * sizeof(float));
  be.linear(w, dx.as<float>(), rows, dy.as<float>());
  return get(be, dy, static_cast<size_t>(rows * w.out_features()));
}

// A host vector's bytes in a fresh device buffer of GPU 0.
template <typename Host>
cuda::DeviceBuffer put_dev(const Host& host) {
  cuda::DeviceBuffer b(0, host.size() * sizeof(host[0]));
  b.upload(host.data(), b.bytes());
  return b;
}

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
  DeviceBuffer x = put(*b.gpu, std::vector<float>(256)), y = b.gpu->allocate(4 * sizeof(float));
  try {
    b.gpu->linear(w, x.as<float>(), 1, y.as<float>());
    FAIL("a q2_k weight did not throw");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(std::string(e.what()).find("q2_k") != std::string::npos);
    CHECK(std::string(e.what()).find("--placement") != std::string::npos);
  }
  CHECK(cuda_backend_weight_bytes(*b.gpu) == 0);
  CHECK_THROWS_AS(b.gpu->prepare(WeightGroup::attention, w), Error);
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
    // 12800 inputs do not fit the shared-memory tile: x is read from global memory.
    for (auto [out_, in_] : {std::pair<int64_t, int64_t>{96, 512}, {130, 768}, {7, 256}, {40, 12800}}) {
      const int64_t out = out_, in = plain && in_ == 256 ? 300 : in_;  // a width that is not a whole number of 32-value chunks
      const auto w = random_weight(t, out, in, ++seed, /*with_bias=*/t == DType::f32);
      b.gpu = make_cuda_backend(0);  // uploads are cached by host address, which a freed weight hands on
      for (int64_t rows : {1, 5, 17, 40, 130}) {  // 40 and 130: the tensor-core tiles, whole and partial
        if (rows > 17 && in == 12800 && t != DType::q4_k) continue;  // the wide rows once are enough
        const auto x = random_floats(static_cast<size_t>(rows * in), ++seed);
        INFO(type_name(t) << " [" << out << ", " << in << "] rows " << rows);
        const auto reference = linear_on(*b.cpu, w.w, x, rows);
        const double error = relative_error(linear_on(*b.gpu, w.w, x, rows), reference);
        if (rows < 32 || in % 64 != 0) {
          CHECK(error < 2e-5);
          continue;
        }
        // From 32 rows the tensor-core tiles: through the backend bf16 operands for quantised, BF16 and
        // FP8 weights (8-bit mantissas: a few 1e-3 of the largest output expected), 3xTF32 for F32
        // and F16; directly, 3xTF32 for every type when float32 accuracy is asked for.
        CHECK(error < (t == DType::f32 || t == DType::f16 ? 2e-5 : 1e-2));
        auto device_copy = [](const TensorView& v) {
          cuda::DeviceBuffer d(0, std::max<size_t>(v.nbytes, 4));
          if (v.nbytes) d.upload(v.data, v.nbytes);
          return d;
        };
        cuda::DeviceBuffer dx(0, x.size() * 4), dy(0, static_cast<size_t>(rows * out) * 4),
            dw = device_copy(w.w.weight), ds = device_copy(w.w.scale_inv), db = device_copy(w.w.bias);
        dx.upload(x.data(), dx.bytes());
        const cuda::DeviceWeight device_weight{t, dw.data(), out, in,
                                               w.w.scale_inv.empty() ? nullptr : static_cast<const float*>(ds.data()),
                                               w.w.bias.empty() ? nullptr : static_cast<const float*>(db.data())};
        cuda::Stream stream(0);
        cuda::linear(stream, device_weight, static_cast<const float*>(dx.data()), rows, static_cast<float*>(dy.data()),
                     cuda::TensorCoreMath::tf32x3);
        stream.synchronize();
        std::vector<float> precise(static_cast<size_t>(rows * out));
        dy.download(precise.data(), dy.bytes());
        CHECK(relative_error(precise, reference) < 2e-5);
      }
    }
  }
}

TEST_CASE("cuda linear from 256 rows (cuBLAS: F32 in float32, Q4_K/Q6_K copied to bf16 a block per warp) equals the "
          "CPU reference", "[cuda]") {
  // The prefill path the test above stops short of: F32 weights without a bias go to cuBLAS in float32 as
  // stored; K-quant weights are copied to bf16 (bf16_rows.cuh) and multiplied in bf16.
  if (!have_gpu()) return;
  Backends b;
  uint32_t seed = 700;
  for (DType t : {DType::f32, DType::q4_k, DType::q6_k})
    for (auto [out, in] : {std::pair<int64_t, int64_t>{128, 2048}, {67, 768}}) {
      const auto w = random_weight(t, out, in, ++seed, /*with_bias=*/false);
      b.gpu = make_cuda_backend(0);
      const int64_t rows = 300;
      const auto x = random_floats(static_cast<size_t>(rows * in), ++seed);
      INFO(type_name(t) << " [" << out << ", " << in << "] rows " << rows);
      // F32: float32 products in another order (2e-5, as the tiles' 3xTF32); K-quants: bf16 operands.
      CHECK(relative_error(linear_on(*b.gpu, w.w, x, rows), linear_on(*b.cpu, w.w, x, rows)) <
            (t == DType::f32 ? 2e-5 : 1e-2));
    }
}

TEST_CASE("cuda linears (several matrices of one input, one launch where they agree) equal the CPU's calls",
          "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  // A layer's q, k and v (4096/512/512 rows of 2048), matrices whose boundaries fall inside a block of
  // the launch (4093 and 3 rows), a group whose middle matrix has another type (the Q4_K_M mix's Q6_K
  // attn_v: three launches), bf16 rows with a bias, a type the lane kernel does not take (Q8_0: a
  // launch each), and row counts of one decode token, a few tokens and a prompt for the tensor cores.
  struct Group {
    std::vector<DType> types;
    std::vector<int64_t> outs;
    int64_t in;
  };
  const Group groups[] = {{{DType::q4_k, DType::q4_k, DType::q4_k}, {4096, 512, 512}, 2048},
                          {{DType::q4_k, DType::q4_k, DType::q4_k}, {4093, 3, 517}, 2048},
                          {{DType::q4_k, DType::q6_k, DType::q4_k}, {256, 96, 130}, 1024},
                          {{DType::bf16, DType::bf16}, {300, 7}, 512},
                          {{DType::q8_0, DType::q8_0}, {64, 40}, 512}};
  uint32_t seed = 700;
  for (const Group& g : groups) {
    std::vector<test::OwnedWeight> ws;
    for (size_t i = 0; i < g.types.size(); ++i)
      ws.push_back(random_weight(g.types[i], g.outs[i], g.in, ++seed, /*with_bias=*/g.types[i] == DType::bf16));
    std::vector<const LinearWeight*> pointers;
    for (const auto& w : ws) pointers.push_back(&w.w);
    b.gpu = make_cuda_backend(0);
    for (int64_t rows : {1, 3, 40}) {
      const auto x = random_floats(static_cast<size_t>(rows * g.in), ++seed);
      auto run = [&](Backend& be, bool together) {
        DeviceBuffer dx = put(be, x);
        std::vector<DeviceBuffer> dys;
        std::vector<float*> ys;
        for (int64_t out : g.outs) {
          dys.push_back(be.allocate(static_cast<size_t>(rows * out) * sizeof(float)));
          ys.push_back(dys.back().as<float>());
        }
        if (together)
          be.linears(pointers.data(), ys.data(), static_cast<int>(ys.size()), dx.as<float>(), rows);
        else
          for (size_t i = 0; i < ys.size(); ++i) be.linear(*pointers[i], dx.as<float>(), rows, ys[i]);
        std::vector<float> all;
        for (size_t i = 0; i < ys.size(); ++i) {
          const auto y = get(be, dys[i], static_cast<size_t>(rows * g.outs[i]));
          all.insert(all.end(), y.begin(), y.end());
        }
        return all;
      };
      INFO(type_name(g.types[0]) << " group of " << g.types.size() << ", rows " << rows);
      const auto reference = run(*b.cpu, false);
      const auto one_by_one = run(*b.gpu, false);
      const auto together = run(*b.gpu, true);
      // The same dot products; only a matrix's warps per row may differ in a shared launch.
      CHECK(relative_error(together, one_by_one) < 2e-6);
      CHECK(relative_error(together, reference) < (rows >= 32 ? 1e-2 : 2e-5));
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
    auto run = [&](Backend& be) {
      DeviceBuffer d_ids = put(be, ids), out = be.allocate(static_cast<size_t>(n * width) * sizeof(float));
      be.embedding(view, d_ids.as<int32_t>(), n, out.as<float>());
      return get(be, out, static_cast<size_t>(n * width));
    };
    INFO(type_name(t));
    CHECK(run(*b.gpu) == run(*b.cpu));
  }
}

TEST_CASE("cuda rms_norm equals the CPU reference, strided and in place", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  for (auto [rows_, dim_, stride_] : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 64}, {7, 100, 130}, {33, 512, 512}}) {
    const int64_t rows = rows_, dim = dim_, stride = stride_;  // lambdas below capture them
    const auto x = random_floats(static_cast<size_t>(rows * stride), 3);
    const auto w = random_floats(static_cast<size_t>(dim), 4);
    auto run = [&](Backend& be, bool in_place) {
      DeviceBuffer dx = put(be, x), dw = put(be, w), out = put(be, std::vector<float>(x.size(), -1.f));
      float* dst = in_place ? dx.as<float>() : out.as<float>();
      be.rms_norm(dx.as<float>(), dw.as<float>(), rows, dim, stride, 1e-6, dst);
      return get(be, in_place ? dx : out, x.size());
    };
    INFO("rows " << rows << " dim " << dim << " stride " << stride);
    CHECK(relative_error(run(*b.gpu, false), run(*b.cpu, false)) < 1e-6);
    CHECK(relative_error(run(*b.gpu, true), run(*b.cpu, true)) < 1e-6);
  }
}

TEST_CASE("cuda rope equals RotaryEmbedding::apply (neox, interleaved, YaRN)", "[cuda]") {
  // Both backends build their tables from the same plain RopeParams.
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
      const RopeParams rope = RopeParams::from_config(c, 32);
      const int64_t rows = 9, heads = 3, head_stride = 48, row_stride = heads * head_stride + 5;
      const std::vector<int64_t> positions = {0, 1, 2, 17, 100, 511, 1023, 2047, 3999};
      const auto data = random_floats(static_cast<size_t>(rows * row_stride), 5);
      auto run = [&](Backend& be) {
        DeviceBuffer d = put(be, data), pos = put(be, positions);
        be.rope(rope, d.as<float>(), rows, row_stride, heads, head_stride, pos.as<int64_t>());
        return get(be, d, data.size());
      };
      INFO((layout == RopeLayout::neox ? "neox" : "interleaved") << (yarn ? " yarn" : ""));
      CHECK(relative_error(run(*b.gpu), run(*b.cpu)) < 1e-6);
    }
}

TEST_CASE("cuda add_rms_norm and head_norm_rope equal the CPU's two calls each", "[cuda]") {
  // The CPU backend's defaults are add then rms_norm, and rms_norm then rope: the fused CUDA kernels
  // must give what those give, for the widths the models use and past the fused kernels' limits.
  if (!have_gpu()) return;
  Backends b;
  for (auto [rows_, dim_] : {std::pair<int64_t, int64_t>{1, 2048}, {5, 7168}, {3, 100}, {2, 9000}}) {
    const int64_t rows = rows_, dim = dim_;
    const auto hidden = random_floats(static_cast<size_t>(rows * dim), 11);
    const auto delta = random_floats(static_cast<size_t>(rows * dim), 12);
    const auto w = random_floats(static_cast<size_t>(dim), 13);
    auto run = [&](Backend& be) {
      DeviceBuffer dh = put(be, hidden), dd = put(be, delta), dw = put(be, w),
                   out = put(be, std::vector<float>(hidden.size(), -1.f));
      be.add_rms_norm(dh.as<float>(), dd.as<float>(), dw.as<float>(), rows, dim, 1e-6, out.as<float>());
      return std::pair{get(be, dh, hidden.size()), get(be, out, hidden.size())};
    };
    INFO("rows " << rows << " dim " << dim);
    const auto [gpu_sum, gpu_normed] = run(*b.gpu);
    const auto [cpu_sum, cpu_normed] = run(*b.cpu);
    CHECK(gpu_sum == cpu_sum);  // one float add per value, bit for bit
    CHECK(relative_error(gpu_normed, cpu_normed) < 1e-6);
  }
  for (RopeLayout layout : {RopeLayout::neox, RopeLayout::interleaved})
    for (auto [head_dim_, rotary_] : {std::pair<int64_t, int64_t>{128, 128}, {64, 32}, {1100, 64}})
      for (int64_t heads_ : {5, 13})  // one block of 8 heads a token, and a second one partly filled
      for (bool with_norm : {true, false}) {
        ModelConfig c;
        c.rope_theta = 1000000.0;
        c.rope_layout = layout;
        c.max_position_embeddings = 4096;
        const int64_t head_dim = head_dim_, rows = 4, heads = heads_;
        const RopeParams rope = RopeParams::from_config(c, rotary_);
        const std::vector<int64_t> positions = {0, 7, 300, 4000};
        const auto data = random_floats(static_cast<size_t>(rows * heads * head_dim), 14);
        const auto w = random_floats(static_cast<size_t>(head_dim), 15);
        auto run = [&](Backend& be) {
          DeviceBuffer d = put(be, data), pos = put(be, positions), dw = put(be, w);
          be.head_norm_rope(rope, d.as<float>(), rows, heads, head_dim, with_norm ? dw.as<float>() : nullptr, 1e-6,
                            pos.as<int64_t>());
          return get(be, d, data.size());
        };
        INFO((layout == RopeLayout::neox ? "neox" : "interleaved")
             << " head_dim " << head_dim << " rotary " << rotary_ << " heads " << heads << (with_norm ? " normed" : ""));
        const auto gpu = run(*b.gpu), cpu = run(*b.cpu);
        CHECK(relative_error(gpu, cpu) < 1e-6);
        CHECK(gpu != data);
      }
  ModelConfig c;
  const RopeParams too_wide = RopeParams::from_config(c, 256);
  DeviceBuffer d = put(*b.gpu, random_floats(2 * 128, 16)), pos = put(*b.gpu, std::vector<int64_t>{0, 1});
  CHECK_THROWS_AS(b.gpu->head_norm_rope(too_wide, d.as<float>(), 2, 1, 128, nullptr, 1e-6, pos.as<int64_t>()), Error);
}

namespace {

// Two sequences in one pool, every cached row random and written through each backend's
// kv_append (so the GPU's VRAM planes and the pool's host planes hold the same rows); a batch of a
// 3-token chunk of the first and one decode token of the second.
struct AttentionSetup {
  KvPool pool;
  BlockTable a, b;
  int64_t layer;
  std::vector<int64_t> positions = {37, 38, 39, 22};
  std::vector<BlockTable*> tables;

  AttentionSetup(KvLayout layout, KvType type, int64_t width, int64_t layer_)
      : pool(KvPoolSpec{layout, 2, width, 16, 12, Device::cpu(), type}), layer(layer_) {
    a.reserve(pool, 40);
    b.reserve(pool, 23);
    tables = {&a, &a, &a, &b};
  }
  // Flat block tables [tokens, stride] as the forward pass uploads them.
  std::vector<int32_t> flat(const std::vector<BlockTable*>& t, int64_t stride) const {
    std::vector<int32_t> out(t.size() * static_cast<size_t>(stride), 0);
    for (size_t i = 0; i < t.size(); ++i)
      for (int64_t j = 0; j < stride && j < static_cast<int64_t>(t[i]->blocks().size()); ++j)
        out[i * static_cast<size_t>(stride) + static_cast<size_t>(j)] = t[i]->blocks()[static_cast<size_t>(j)];
    return out;
  }
  // Fills every slot of both tables on `be` (rows seeded per slot, so every backend writes the same).
  void fill(Backend& be) {
    be.kv_attach(pool, layer);
    const int64_t row = pool.row_width();
    std::vector<int64_t> slots;
    std::vector<BlockTable*> owners;
    for (BlockTable* t : {&a, &b})
      for (int64_t p = 0; p < t->capacity_tokens(pool); ++p) slots.push_back(p), owners.push_back(t);
    const auto n = static_cast<int64_t>(slots.size());
    const int64_t stride = 3;
    DeviceBuffer d_slots = put(be, slots), d_tables = put(be, flat(owners, stride));
    for (int64_t plane = 0; plane < pool.planes(); ++plane) {
      const auto rows = random_floats(static_cast<size_t>(n * row), 50 + static_cast<uint32_t>(plane));
      DeviceBuffer d_rows = put(be, rows);
      AttentionBatch batch;
      batch.tokens = n;
      batch.positions = d_slots.as<int64_t>();
      batch.block_tables = d_tables.as<int32_t>();
      batch.table_stride = stride;
      batch.max_context = 48;
      be.kv_append(pool, layer, plane, batch, d_rows.as<float>(), row);
    }
    be.synchronize();
  }
  // The batch on `be`, its device parts kept in `keep`.
  AttentionBatch batch(Backend& be, std::vector<DeviceBuffer>& keep) const {
    keep.push_back(put(be, positions));
    keep.push_back(put(be, flat(tables, 3)));
    AttentionBatch bt;
    bt.tokens = 4;
    bt.positions = keep[keep.size() - 2].as<int64_t>();
    bt.block_tables = keep.back().as<int32_t>();
    bt.table_stride = 3;
    bt.max_context = 40;
    return bt;
  }
};

}  // namespace

TEST_CASE("cuda GQA attention over the paged pool in VRAM equals the CPU reference (f32, f16, bf16 KV)", "[cuda]") {
  if (!have_gpu()) return;
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16}) {
    Backends b;
    const int64_t heads = 8, kv_heads = 2, head_dim = 64;
    AttentionSetup s(KvLayout::gqa, type, 2 * kv_heads * head_dim, 1);
    s.fill(*b.cpu);
    s.fill(*b.gpu);
    const auto q = random_floats(static_cast<size_t>(4 * heads * head_dim), 9);
    auto run = [&](Backend& be) {
      std::vector<DeviceBuffer> keep;
      const AttentionBatch batch = s.batch(be, keep);
      DeviceBuffer dq = put(be, q), out = be.allocate(q.size() * sizeof(float));
      be.gqa_attention(s.pool, 1, batch, dq.as<float>(), heads, kv_heads, head_dim, 0.125f, out.as<float>());
      return get(be, out, q.size());
    };
    INFO(kv_type_name(type));
    CHECK(relative_error(run(*b.gpu), run(*b.cpu)) < 1e-5);
  }
}

TEST_CASE("cuda MLA attention over the latent cache in VRAM equals the CPU reference", "[cuda]") {
  if (!have_gpu()) return;
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16}) {
    Backends b;
    const int64_t heads = 4, kv_lora = 64, rope_dim = 16;
    AttentionSetup s(KvLayout::mla_latent, type, kv_lora + rope_dim, 0);
    s.fill(*b.cpu);
    s.fill(*b.gpu);
    const auto ql = random_floats(static_cast<size_t>(4 * heads * kv_lora), 10);
    const auto qr = random_floats(static_cast<size_t>(4 * heads * rope_dim), 11);
    auto run = [&](Backend& be) {
      std::vector<DeviceBuffer> keep;
      const AttentionBatch batch = s.batch(be, keep);
      DeviceBuffer dl = put(be, ql), dr = put(be, qr), out = be.allocate(ql.size() * sizeof(float));
      be.mla_attention(s.pool, 0, batch, dl.as<float>(), dr.as<float>(), heads, kv_lora, rope_dim, 0.1f,
                       out.as<float>());
      return get(be, out, ql.size());
    };
    INFO(kv_type_name(type));
    CHECK(relative_error(run(*b.gpu), run(*b.cpu)) < 1e-5);
  }
}

TEST_CASE("cuda kv_append and copy-on-write keep the VRAM planes equal to the host pool's", "[cuda]") {
  if (!have_gpu()) return;
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16, KvType::fp8, KvType::int8}) {
    Backends b;
    const int64_t heads = 4, kv_heads = 2, head_dim = 32;
    AttentionSetup s(KvLayout::gqa, type, 2 * kv_heads * head_dim, 1);
    s.fill(*b.cpu);
    s.fill(*b.gpu);
    // A shared prefix made writable: the pool copies block 0 of `a`; the GPU must copy it too.
    BlockTable shared = s.a.share_prefix(s.pool, 16);
    s.a.make_writable(s.pool, 0, 16);
    shared.release(s.pool);
    const auto q = random_floats(static_cast<size_t>(4 * heads * head_dim), 12);
    auto run = [&](Backend& be) {
      std::vector<DeviceBuffer> keep;
      const AttentionBatch batch = s.batch(be, keep);
      DeviceBuffer dq = put(be, q), out = be.allocate(q.size() * sizeof(float));
      be.gqa_attention(s.pool, 1, batch, dq.as<float>(), heads, kv_heads, head_dim, 0.2f, out.as<float>());
      return get(be, out, q.size());
    };
    INFO(kv_type_name(type));
    CHECK(relative_error(run(*b.gpu), run(*b.cpu)) < 1e-5);
  }
  // int4 has no device kernels: a clear error naming the flag.
  Backends b;
  KvPool pool(KvPoolSpec{KvLayout::gqa, 1, 64, 16, 4, Device::cpu(), KvType::int4});
  try {
    b.gpu->kv_attach(pool, 0);
    FAIL("an int4 KV pool was attached to the GPU");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::unsupported);
    CHECK(std::string(e.what()).find("--kv-type int8, fp8") != std::string::npos);
  }
}

// A run of blocks coming back from the host tier (HostCopies::kept): the GPU issues each layer's copies
// when the layer before it is first used, on a stream of its own, and returns at once. Every later use
// must see the imported bytes: attention over the last layer (against the CPU over the same bytes), an
// export right after the import (the copy to the host waits for them), a copy-on-write of an imported
// block, a second import over a first one still in flight, and settle_imports (after which the host
// copies may change). Reused host copies (the SSD tier's buffer) are complete when import returns.
TEST_CASE("cuda KV import from kept host copies: every later use sees the imported blocks", "[cuda][kv]") {
  if (!have_gpu()) return;
  Backends b;
  const int64_t layers = 8, kv_heads = 2, head_dim = 128, heads = 8, block_tokens = 64, n = 48;
  const int64_t width = 2 * kv_heads * head_dim;
  KvPoolSpec spec{KvLayout::gqa, layers, width, block_tokens, 2 * n + 4, Device::cpu(), KvType::f16};
  KvPool cpu_pool(spec);
  spec.device_layers.assign(static_cast<size_t>(layers), true);
  KvPool pool(spec);
  for (int64_t layer = 0; layer < layers; ++layer) b.gpu->kv_attach(pool, layer);
  const size_t block_bytes = pool.block_bytes();
  DeviceBuffer host = b.gpu->allocate_host(static_cast<size_t>(n) * block_bytes);
  auto* bytes = host.as<std::byte>();
  const auto values = random_floats(static_cast<size_t>(n) * block_bytes / 2, 31);
  kv_encode_row(KvType::f16, values.data(), bytes, static_cast<int64_t>(values.size()));
  const std::vector<std::byte> original(bytes, bytes + static_cast<size_t>(n) * block_bytes);
  std::vector<const std::byte*> sources;
  for (int64_t i = 0; i < n; ++i) sources.push_back(bytes + static_cast<size_t>(i) * block_bytes);
  const auto fresh_blocks = [](KvPool& p, int64_t count) {
    std::vector<int32_t> out;
    for (int64_t i = 0; i < count; ++i) out.push_back(p.allocate_block());
    return out;
  };
  const auto exported = [&](int32_t block) {
    std::vector<std::byte> out(block_bytes);
    pool.export_block(block, out.data());
    return out;
  };
  const auto source_of = [&](int64_t i) {
    return std::vector<std::byte>(original.begin() + static_cast<std::ptrdiff_t>(i * block_bytes),
                                  original.begin() + static_cast<std::ptrdiff_t>((i + 1) * block_bytes));
  };

  // Attention of the last layer over the imported run, issued right after the import.
  const std::vector<int32_t> run = fresh_blocks(pool, n);
  pool.import_blocks(run, sources, HostCopies::kept);
  const std::vector<int32_t> cpu_run = fresh_blocks(cpu_pool, n);
  cpu_pool.import_blocks(cpu_run, sources);
  const std::vector<int64_t> positions = {n * block_tokens - 1, n * block_tokens / 2};
  const auto q = random_floats(static_cast<size_t>(2 * heads * head_dim), 32);
  const auto attend = [&](Backend& be, KvPool& p, const std::vector<int32_t>& blocks) {
    std::vector<int32_t> tables(blocks);
    tables.insert(tables.end(), blocks.begin(), blocks.end());
    DeviceBuffer d_positions = put(be, positions), d_tables = put(be, tables), dq = put(be, q),
                 out = be.allocate(q.size() * sizeof(float));
    AttentionBatch batch;
    batch.tokens = 2;
    batch.positions = d_positions.as<int64_t>();
    batch.block_tables = d_tables.as<int32_t>();
    batch.table_stride = n;
    batch.max_context = n * block_tokens;
    be.gqa_attention(p, layers - 1, batch, dq.as<float>(), heads, kv_heads, head_dim, 0.1f, out.as<float>());
    return get(be, out, q.size());
  };
  CHECK(relative_error(attend(*b.gpu, pool, run), attend(*b.cpu, cpu_pool, cpu_run)) < 1e-5);

  // An export right after an import, of the run's last block (its last layer's copy goes last).
  const std::vector<int32_t> second = fresh_blocks(pool, n);
  pool.import_blocks(second, sources, HostCopies::kept);
  CHECK(exported(second.back()) == source_of(n - 1));
  // A copy-on-write of a block still arriving, and an import over one whose layers are not issued.
  for (const int32_t block : second) pool.release_block(block);
  const std::vector<int32_t> third = fresh_blocks(pool, n);
  pool.import_blocks(third, sources, HostCopies::kept);
  const int32_t copied = pool.copy_block(third[n / 2]);
  pool.import_blocks(std::span<const int32_t>(third).first(1), std::span<const std::byte* const>(sources).last(1),
                     HostCopies::kept);
  CHECK(exported(copied) == source_of(n / 2));
  CHECK(exported(third[0]) == source_of(n - 1));
  CHECK(exported(third[1]) == source_of(1));

  // Settled imports no longer read their host copies; reused ones never do after the import.
  for (const int32_t block : third) pool.release_block(block);
  pool.release_block(copied);
  const std::vector<int32_t> fourth = fresh_blocks(pool, n);
  pool.import_blocks(fourth, sources, HostCopies::kept);
  pool.settle_imports();
  std::memset(bytes, 0, static_cast<size_t>(n) * block_bytes);
  CHECK(exported(fourth[n - 1]) == source_of(n - 1));
  std::vector<std::byte> buffer(source_of(3));
  const std::byte* one = buffer.data();
  pool.import_blocks(std::span<const int32_t>(fourth).first(1), std::span<const std::byte* const>(&one, 1));
  std::fill(buffer.begin(), buffer.end(), std::byte{0});
  CHECK(exported(fourth[0]) == source_of(3));
}

TEST_CASE("cuda gqa_prologue in one launch equals its three calls bit for bit, and the CPU's", "[cuda]") {
  // The fused kernel (float KV types) against the same GPU's head_norm_rope ×2 + kv_append_pair, on a
  // second backend so that each has its own VRAM planes: q, k and the attention over the written
  // cache equal bit for bit; against the CPU within float rounding (fp8/int8 take the three calls).
  if (!have_gpu()) return;
  struct Shape {
    int64_t heads, kv_heads, head_dim, rotary;
  };
  // Qwen3's 32 query and 4 key heads of 128; 12 query heads (a second block partly filled) with half
  // the head rotated; 16 key heads (two key blocks).
  const Shape shapes[] = {{32, 4, 128, 128}, {12, 4, 64, 32}, {16, 16, 128, 64}};
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16, KvType::fp8, KvType::int8})
    for (const Shape& shape : shapes)
      for (bool with_norm : {true, false}) {
        Backends b;
        std::unique_ptr<Backend> second_gpu = make_cuda_backend(0);
        const int64_t heads = shape.heads, kv_heads = shape.kv_heads, head_dim = shape.head_dim, tokens = 4;
        ModelConfig c;
        c.rope_theta = 1000000.0;
        c.max_position_embeddings = 4096;
        const RopeParams rope = RopeParams::from_config(c, shape.rotary);
        const std::vector<int64_t> rope_positions = {5, 300, 4000, 1};  // not the cache slots
        const auto q = random_floats(static_cast<size_t>(tokens * heads * head_dim), 21);
        const auto k = random_floats(static_cast<size_t>(tokens * kv_heads * head_dim), 22);
        const auto v = random_floats(static_cast<size_t>(tokens * kv_heads * head_dim), 23);
        const auto q_norm = random_floats(static_cast<size_t>(head_dim), 24);
        const auto k_norm = random_floats(static_cast<size_t>(head_dim), 25);
        struct Result {
          std::vector<float> q, k, attended;
        };
        auto run = [&](Backend& be, bool fused) {
          AttentionSetup s(KvLayout::gqa, type, 2 * kv_heads * head_dim, 1);
          s.fill(be);
          std::vector<DeviceBuffer> keep;
          const AttentionBatch batch = s.batch(be, keep);
          DeviceBuffer dq = put(be, q), dk = put(be, k), dv = put(be, v), pos = put(be, rope_positions),
                       dqn = put(be, q_norm), dkn = put(be, k_norm), out = be.allocate(q.size() * sizeof(float));
          const float* qn = with_norm ? dqn.as<float>() : nullptr;
          const float* kn = with_norm ? dkn.as<float>() : nullptr;
          const GqaHeads heads_in{dq.as<float>(), dk.as<float>(), dv.as<float>(), heads, kv_heads, head_dim, qn, kn,
                                  1e-6, pos.as<int64_t>()};
          if (fused)
            be.gqa_prologue(rope, heads_in, s.pool, 1, batch);
          else
            be.Backend::gqa_prologue(rope, heads_in, s.pool, 1, batch);
          be.gqa_attention(s.pool, 1, batch, dq.as<float>(), heads, kv_heads, head_dim, 0.1f, out.as<float>());
          return Result{get(be, dq, q.size()), get(be, dk, k.size()), get(be, out, q.size())};
        };
        INFO(kv_type_name(type) << " heads " << heads << "/" << kv_heads << " of " << head_dim << " rotary "
                                << shape.rotary << (with_norm ? " normed" : ""));
        const Result fused = run(*b.gpu, true), three = run(*second_gpu, false), cpu = run(*b.cpu, true);
        CHECK(fused.q == three.q);
        CHECK(fused.k == three.k);
        CHECK(fused.attended == three.attended);
        CHECK(relative_error(fused.q, cpu.q) < 1e-6);
        CHECK(relative_error(fused.k, cpu.k) < 1e-6);
        // A K value a float rounding apart may round to a neighbouring f16/bf16/fp8/int8 code.
        CHECK(relative_error(fused.attended, cpu.attended) < (type == KvType::f32 ? 1e-5 : 2e-3));
        CHECK(fused.q != q);
      }
}

TEST_CASE("cuda gqa_projections: a decode token's prologue in its projections' launches equals the projections "
          "then gqa_prologue bit for bit", "[cuda][q8]") {
  // The warp whose row completes a query or key head normalises and rotates it with the prologue
  // kernel's device code, a key head also into plane 0, each value row into plane 1: q, k, v, the
  // residual sum, the normalised row and the attention over the written cache must equal the
  // projections then gqa_prologue (another backend, its own VRAM planes) bit for bit — twice in a row
  // (the head counters left at zero), with the norm pending and without, for Qwen3-30B-A3B's heads
  // with q/k/v all Q4_K and with a Q6_K v (two launches), and for heads of 64 half rotated. An fp8
  // cache takes the steps apart on both. Against the CPU: within the int8 activations' error.
  if (!have_gpu()) return;
  struct Shape {
    int64_t heads, kv_heads, head_dim, rotary, hidden;
    DType v_type;
  };
  const Shape shapes[] = {{32, 4, 128, 128, 2048, DType::q4_k}, {32, 4, 128, 128, 2048, DType::q6_k},
                          {12, 4, 64, 32, 1024, DType::q4_k}};
  uint32_t seed = 2100;
  for (KvType type : {KvType::f32, KvType::f16, KvType::bf16, KvType::fp8})
    for (const Shape& shape : shapes)
      for (bool with_norm : {true, false}) {
        const int64_t hd = shape.head_dim, in = shape.hidden;
        const auto wq = random_weight(DType::q4_k, shape.heads * hd, in, ++seed);
        const auto wk = random_weight(DType::q4_k, shape.kv_heads * hd, in, ++seed);
        const auto wv = random_weight(shape.v_type, shape.kv_heads * hd, in, ++seed);
        const auto hidden = random_floats(static_cast<size_t>(in), ++seed), delta = random_floats(hidden.size(), ++seed);
        const auto norm_weight = random_floats(hidden.size(), ++seed);
        const auto q_norm = random_floats(static_cast<size_t>(hd), ++seed), k_norm = random_floats(q_norm.size(), ++seed);
        ModelConfig c;
        c.rope_theta = 1000000.0;
        c.max_position_embeddings = 4096;
        const RopeParams rope = RopeParams::from_config(c, shape.rotary);
        struct Result {
          std::vector<float> q, k, v, hidden, normed, attended;
        };
        const auto run = [&](Backend& be) {
          AttentionSetup s(KvLayout::gqa, type, 2 * shape.kv_heads * hd, 1);
          s.fill(be);
          std::vector<DeviceBuffer> keep;
          keep.push_back(put(be, std::vector<int64_t>{37}));
          keep.push_back(put(be, s.flat({&s.a}, 3)));
          AttentionBatch batch;
          batch.tokens = 1;
          batch.positions = keep[0].as<int64_t>();
          batch.block_tables = keep[1].as<int32_t>();
          batch.table_stride = 3;
          batch.max_context = 40;
          DeviceBuffer dh = put(be, hidden), dd = put(be, delta), dn = put(be, norm_weight), normed = put(be, hidden),
                       dq = be.allocate(static_cast<size_t>(shape.heads * hd) * 4),
                       dk = be.allocate(static_cast<size_t>(shape.kv_heads * hd) * 4),
                       dv = be.allocate(static_cast<size_t>(shape.kv_heads * hd) * 4),
                       pos = put(be, std::vector<int64_t>{300}), dqn = put(be, q_norm), dkn = put(be, k_norm),
                       out = be.allocate(static_cast<size_t>(shape.heads * hd) * 4);
          NormFirst first;
          first.normed = normed.as<float>();
          if (with_norm) {
            first.hidden = dh.as<float>();
            first.delta = dd.as<float>();
            first.weight = dn.as<float>();
            first.dim = in;
            first.eps = 1e-6;
          }
          const GqaHeads h{dq.as<float>(), dk.as<float>(), dv.as<float>(), shape.heads, shape.kv_heads, hd,
                           dqn.as<float>(), dkn.as<float>(), 1e-6, pos.as<int64_t>()};
          for (int step = 0; step < 2; ++step) be.gqa_projections(wq.w, wk.w, wv.w, first, rope, h, s.pool, 1, batch);
          be.gqa_attention(s.pool, 1, batch, dq.as<float>(), shape.heads, shape.kv_heads, hd, 0.1f, out.as<float>());
          return Result{get(be, dq, static_cast<size_t>(shape.heads * hd)),
                        get(be, dk, static_cast<size_t>(shape.kv_heads * hd)),
                        get(be, dv, static_cast<size_t>(shape.kv_heads * hd)), get(be, dh, hidden.size()),
                        get(be, normed, hidden.size()), get(be, out, static_cast<size_t>(shape.heads * hd))};
        };
        Backends b;
        std::unique_ptr<Backend> apart = make_cuda_backend(0);
        cuda_backend_set_decode_q8(*b.gpu, true);
        cuda_backend_set_decode_q8(*apart, true);
        cuda_backend_set_fused_prologue(*b.gpu, true);
        cuda_backend_set_fused_prologue(*apart, false);
        INFO(kv_type_name(type) << " heads " << shape.heads << "/" << shape.kv_heads << " of " << hd << " rotary "
                                << shape.rotary << ", v " << type_name(shape.v_type)
                                << (with_norm ? ", norm pending" : ", no norm"));
        const Result one = run(*b.gpu), two = run(*apart), cpu = run(*b.cpu);
        CHECK(one.q == two.q);
        CHECK(one.k == two.k);
        CHECK(one.v == two.v);
        CHECK(one.hidden == two.hidden);
        if (with_norm) CHECK(one.normed == two.normed);
        CHECK(one.attended == two.attended);
        // The int8 activations' error (q within 3e-2), through the softmax and an fp8 cache (H100: up to 0.034
        // on float caches, 0.083 on fp8).
        CHECK(relative_error(one.q, cpu.q) < 3e-2);
        CHECK(relative_error(one.attended, cpu.attended) < (type == KvType::fp8 ? 0.15 : 0.06));
        // The launches themselves (a silent fall-back would pass the comparisons above): the kernel entry
        // over plain buffers — one f32 cache block, slot 37 at its row 5 — takes the shape and gives the
        // steps' q, k and v, k's and v's rows in planes 0 and 1, and leaves its head counters at zero.
        if (type != KvType::f32 || with_norm) continue;
        const auto bytes = [](const test::OwnedWeight& w) {
          const auto* p = static_cast<const uint8_t*>(w.w.weight.data);
          return std::vector<uint8_t>(p, p + w.w.weight.nbytes);
        };
        const int64_t kv_width = shape.kv_heads * hd, row_bytes = kv_width * 4, counters = shape.heads + shape.kv_heads;
        const RopeTables tables = rope_tables(rope);
        cuda::Stream stream(0);
        cuda::DeviceBuffer dwq = put_dev(bytes(wq)), dwk = put_dev(bytes(wk)), dwv = put_dev(bytes(wv)),
                           dx = put_dev(hidden), dq(0, static_cast<size_t>(shape.heads * hd) * 4),
                           dk(0, static_cast<size_t>(kv_width) * 4), dv(0, static_cast<size_t>(kv_width) * 4),
                           layer = put_dev(std::vector<float>(static_cast<size_t>(2 * 16 * kv_width), 0.f)),
                           slot = put_dev(std::vector<int64_t>{37}), table = put_dev(std::vector<int32_t>{0, 0, 0}),
                           pos = put_dev(std::vector<int64_t>{300}), dqn = put_dev(q_norm), dkn = put_dev(k_norm),
                           inv = put_dev(tables.inverse_frequencies),
                           arrivals = put_dev(std::vector<uint32_t>(static_cast<size_t>(counters), 0u));
        const cuda::DeviceWeight ws[3] = {{DType::q4_k, dwq.data(), shape.heads * hd, in},
                                          {DType::q4_k, dwk.data(), kv_width, in},
                                          {shape.v_type, dwv.data(), kv_width, in}};
        float* const ys[3] = {static_cast<float*>(dq.data()), static_cast<float*>(dk.data()),
                              static_cast<float*>(dv.data())};
        cuda::GqaTail tail;
        tail.heads = shape.heads;
        tail.kv_heads = shape.kv_heads;
        tail.head_dim = hd;
        tail.q_norm = static_cast<const float*>(dqn.data());
        tail.k_norm = static_cast<const float*>(dkn.data());
        tail.eps = 1e-6;
        tail.rope_position = static_cast<const int64_t*>(pos.data());
        tail.inv_freq = static_cast<const double*>(inv.data());
        tail.half = shape.rotary / 2;
        tail.neox = rope.layout == RopeLayout::neox;
        tail.attention_factor = tables.attention_factor;
        tail.layer_base = layer.data();
        tail.kv = cuda::PagedKv{layer.data(), KvType::f32, 16, 2 * 16 * row_bytes, row_bytes, 0};
        tail.slot = static_cast<const int64_t*>(slot.data());
        tail.block_table = static_cast<const int32_t*>(table.data());
        tail.arrivals = static_cast<unsigned*>(arrivals.data());
        REQUIRE(cuda::gqa_projections(stream, ws, ys, {}, static_cast<const float*>(dx.data()), tail));
        stream.synchronize();
        const auto download = [](cuda::DeviceBuffer& d, size_t n) {
          std::vector<float> v(n);
          d.download(v.data(), n * 4);
          return v;
        };
        const auto planes = download(layer, static_cast<size_t>(2 * 16 * kv_width));
        const auto row = [&](int64_t plane) {
          const auto first = planes.begin() + (plane * 16 + 37 % 16) * kv_width;
          return std::vector<float>(first, first + kv_width);
        };
        std::vector<uint32_t> left(static_cast<size_t>(counters), 7u);
        arrivals.download(left.data(), left.size() * 4);
        CHECK(download(dq, two.q.size()) == two.q);
        CHECK(download(dk, two.k.size()) == two.k);
        CHECK(download(dv, two.v.size()) == two.v);
        CHECK(row(0) == two.k);
        CHECK(row(1) == two.v);
        CHECK(left == std::vector<uint32_t>(left.size(), 0u));
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
      const auto latent_n = static_cast<size_t>(tokens * shape.heads * shape.kv_lora);
      const auto out_n = static_cast<size_t>(tokens * shape.heads * shape.v);
      auto absorb = [&](Backend& be) {
        DeviceBuffer dq = put(be, q), out = be.allocate(latent_n * sizeof(float));
        be.mla_absorb_query(kv_b.w, shape, dq.as<float>(), tokens, out.as<float>());
        return get(be, out, latent_n);
      };
      const auto expected = absorb(*b.cpu);
      INFO(type_name(t) << " tokens " << tokens);
      CHECK(relative_error(absorb(*b.gpu), expected) < 1e-5);
      auto expand = [&](Backend& be) {
        DeviceBuffer da = put(be, expected), out = be.allocate(out_n * sizeof(float));
        be.mla_expand_values(kv_b.w, shape, da.as<float>(), tokens, out.as<float>());
        return get(be, out, out_n);
      };
      CHECK(relative_error(expand(*b.gpu), expand(*b.cpu)) < 1e-5);
    }
  }
}

namespace {

// `count` experts of random weights (gate/up [inter, hidden] of one type, down [hidden, inter] of
// another) that own their bytes; seeds seed + 3e, + 1, + 2.
struct RandomExperts {
  std::vector<test::OwnedWeight> owned;
  ExpertWeights weights;
};
RandomExperts random_experts(DType gate_type, DType down_type, int64_t count, int64_t hidden, int64_t inter,
                             uint32_t seed) {
  RandomExperts r;
  for (int64_t e = 0; e < count; ++e) {
    const uint32_t s = seed + 3 * static_cast<uint32_t>(e);
    r.owned.push_back(random_weight(gate_type, inter, hidden, s));
    r.owned.push_back(random_weight(gate_type, inter, hidden, s + 1));
    r.owned.push_back(random_weight(down_type, hidden, inter, s + 2));
  }
  for (int64_t e = 0; e < count; ++e) {  // after the pushes: the views point into settled vectors
    r.weights.gate.push_back(r.owned[static_cast<size_t>(3 * e)].w);
    r.weights.up.push_back(r.owned[static_cast<size_t>(3 * e + 1)].w);
    r.weights.down.push_back(r.owned[static_cast<size_t>(3 * e + 2)].w);
  }
  return r;
}

}  // namespace

TEST_CASE("cuda SiLU-GLU MLP and routed experts equal the CPU reference", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  const int64_t hidden = 256, inter = 96, experts = 4, top_k = 2;
  for (DType t : {DType::f32, DType::bf16, DType::q8_0}) {
    const auto gate = random_weight(t, inter, hidden, 31), up = random_weight(t, inter, hidden, 32),
               down = random_weight(t, hidden, inter, 33);
    b.gpu = make_cuda_backend(0);  // uploads are cached by host address, which a freed weight hands on
    for (int64_t tokens : {1, 6}) {
      const auto x = random_floats(static_cast<size_t>(tokens * hidden), 34);
      auto run = [&](Backend& be) {
        DeviceBuffer dx = put(be, x), out = be.allocate(x.size() * sizeof(float));
        be.silu_glu_mlp(gate.w, up.w, down.w, dx.as<float>(), tokens, out.as<float>());
        return get(be, out, x.size());
      };
      INFO(type_name(t) << " tokens " << tokens);
      CHECK(relative_error(run(*b.gpu), run(*b.cpu)) < 2e-5);
    }
    const RandomExperts random = random_experts(t, t, experts, hidden, inter, 40);
    const ExpertWeights& ew = random.weights;
    const int64_t tokens = 6;
    const std::vector<int32_t> ids = {0, 1, 2, 0, 3, 1, 1, 2, 0, 3, 2, 3};  // expert 0..3, none twice per token
    const auto weights = random_floats(static_cast<size_t>(tokens * top_k), 43);
    const auto x = random_floats(static_cast<size_t>(tokens * hidden), 44);
    auto run = [&](Backend& be, bool submitted) {
      DeviceBuffer dx = put(be, x), di = put(be, ids), dw = put(be, weights), out = be.allocate(x.size() * sizeof(float));
      if (submitted) {  // the split call, waited for through an event
        auto done = be.create_event();
        be.moe_routed_experts_submit(ew, dx.as<float>(), tokens, hidden, di.as<int32_t>(), dw.as<float>(),
                                     top_k, out.as<float>());
        be.record(*done);
        done->synchronize();
      } else {
        be.moe_routed_experts(ew, dx.as<float>(), tokens, hidden, di.as<int32_t>(), dw.as<float>(), top_k,
                              out.as<float>());
      }
      return get(be, out, x.size());
    };
    INFO(type_name(t) << " routed experts");
    const std::vector<float> gpu = run(*b.gpu, false);
    CHECK(relative_error(gpu, run(*b.cpu, false)) < 2e-5);
    CHECK(run(*b.gpu, true) == gpu);
    CHECK(run(*b.cpu, true) == run(*b.cpu, false));
  }
}

TEST_CASE("cuda routed experts: few tokens pair by pair equal many tokens grouped by expert, and the CPU",
          "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  // 20 > 16 >= 5 tokens; 64 experts keep the 20 tokens' pairs (at most 200) below
  // kGroupedTensorCorePairs (4) an expert, so the grouping stays on the CUDA cores, which add in the
  // pairwise kernels' order.
  constexpr int64_t hidden = 512, inter = 256, experts = 64, many = 20, few = 5, most_slots = 10;
  static_assert(many * most_slots < cuda::kGroupedTensorCorePairs * experts, "the grouped run stays on the CUDA cores");
  // {gate/up type, down type}: Q4_K_M stores some layers' down projections as Q6_K. Top 10: more slots
  // than the pairwise down kernel has warps per row (8), so a warp takes two.
  for (auto [gate_type, down_type] : {std::pair{DType::q4_k, DType::q4_k}, std::pair{DType::q4_k, DType::q6_k},
                                      std::pair{DType::q8_0, DType::q8_0}, std::pair{DType::f8_e4m3, DType::f8_e4m3},
                                      std::pair{DType::bf16, DType::bf16}}) {
    for (const int64_t top_k : {int64_t{3}, most_slots}) {
      b.gpu = make_cuda_backend(0);
      const RandomExperts random = random_experts(gate_type, down_type, experts, hidden, inter, 140);
      const ExpertWeights& ew = random.weights;
      std::vector<int32_t> ids;
      for (int64_t t = 0; t < many; ++t)
        for (int64_t s = 0; s < top_k; ++s) ids.push_back(static_cast<int32_t>((t * 5 + s * 3) % experts));
      const auto weights = random_floats(static_cast<size_t>(many * top_k), 143);
      const auto x = random_floats(static_cast<size_t>(many * hidden), 144);
      auto run = [&](Backend& be, int64_t tokens) {
        DeviceBuffer dx = put(be, x), di = put(be, ids), dw = put(be, weights);
        DeviceBuffer out = be.allocate(static_cast<size_t>(tokens * hidden) * sizeof(float));
        be.moe_routed_experts(ew, dx.as<float>(), tokens, hidden, di.as<int32_t>(), dw.as<float>(), top_k,
                              out.as<float>());
        return get(be, out, static_cast<size_t>(tokens * hidden));
      };
      INFO(type_name(gate_type) << " / " << type_name(down_type) << ", top " << top_k);
      const std::vector<float> grouped = run(*b.gpu, many), pairwise = run(*b.gpu, few), cpu = run(*b.cpu, many);
      CHECK(relative_error(grouped, cpu) < 2e-5);
      const std::vector<float> grouped_few(grouped.begin(), grouped.begin() + few * hidden);
      CHECK(relative_error(pairwise, grouped_few) < 1e-6);
    }
  }
}

namespace {

// The experts uploaded as the kernels' pointer tables (what the backend's expert tables hold).
struct UploadedExperts {
  std::vector<cuda::DeviceBuffer> buffers;
  cuda::ExpertTable table;
};
// shift: each matrix placed that many bytes into its buffer (rows off the wide loads' alignment).
UploadedExperts upload_experts(const ExpertWeights& ew, size_t shift = 0) {
  UploadedExperts u;
  const auto count = static_cast<int64_t>(ew.count());
  auto up_view = [&](const TensorView& v) -> const void* {
    if (v.empty()) return nullptr;
    u.buffers.emplace_back(0, v.nbytes + shift);
    u.buffers.back().upload(v.data, v.nbytes, shift);
    return static_cast<const char*>(u.buffers.back().data()) + shift;
  };
  std::vector<const void*> ptrs(static_cast<size_t>(6 * count));
  for (int64_t e = 0; e < count; ++e) {
    const auto i = static_cast<size_t>(e);
    ptrs[i] = up_view(ew.gate[i].weight);
    ptrs[static_cast<size_t>(count) + i] = up_view(ew.up[i].weight);
    ptrs[static_cast<size_t>(2 * count) + i] = up_view(ew.down[i].weight);
    ptrs[static_cast<size_t>(3 * count) + i] = up_view(ew.gate[i].scale_inv);
    ptrs[static_cast<size_t>(4 * count) + i] = up_view(ew.up[i].scale_inv);
    ptrs[static_cast<size_t>(5 * count) + i] = up_view(ew.down[i].scale_inv);
  }
  u.buffers.emplace_back(0, ptrs.size() * sizeof(void*));
  u.buffers.back().upload(ptrs.data(), ptrs.size() * sizeof(void*));
  const auto* table = static_cast<const void* const*>(u.buffers.back().data());
  cuda::ExpertTable& t = u.table;
  t.experts = count;
  t.intermediate = ew.gate[0].out_features();
  t.gate_type = ew.gate[0].weight.dtype;
  t.up_type = ew.up[0].weight.dtype;
  t.down_type = ew.down[0].weight.dtype;
  t.gate_row_bytes = static_cast<int64_t>(*row_bytes(t.gate_type, ew.gate[0].in_features()));
  t.up_row_bytes = static_cast<int64_t>(*row_bytes(t.up_type, ew.up[0].in_features()));
  t.down_row_bytes = static_cast<int64_t>(*row_bytes(t.down_type, ew.down[0].in_features()));
  t.gate = table;
  t.up = table + count;
  t.down = table + 2 * count;
  if (!ew.gate[0].scale_inv.empty()) {
    t.gate_scales = reinterpret_cast<const float* const*>(table + 3 * count);
    t.up_scales = reinterpret_cast<const float* const*>(table + 4 * count);
    t.down_scales = reinterpret_cast<const float* const*>(table + 5 * count);
  }
  return u;
}

// Routing skewed so that expert 0 takes most tokens' first slot (tiles longer than 8), over the first
// `spread` experts.
std::vector<int32_t> skewed_ids(int64_t tokens, int64_t top_k, int64_t spread) {
  std::vector<int32_t> ids;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t s = 0; s < top_k; ++s)
      ids.push_back(static_cast<int32_t>(s == 0 && t % 3 != 0 ? 0 : (t * 7 + s * 5) % spread));
  return ids;
}


}  // namespace

TEST_CASE("cuda routed experts grouped on the device (CUDA and tensor cores) equal them pair by pair", "[cuda]") {
  if (!have_gpu()) return;
  const int64_t hidden = 512, inter = 256, experts = 16, top_k = 4;
  for (auto [gate_type, down_type] : {std::pair{DType::q4_k, DType::q4_k}, std::pair{DType::q4_k, DType::q6_k},
                                      std::pair{DType::q8_0, DType::q8_0}, std::pair{DType::f8_e4m3, DType::f8_e4m3},
                                      std::pair{DType::bf16, DType::bf16}, std::pair{DType::iq4_xs, DType::q5_k}}) {
    const RandomExperts random = random_experts(gate_type, down_type, experts, hidden, inter, 150);
    const UploadedExperts up = upload_experts(random.weights);
    for (int64_t tokens : {17, 61, 300}) {
      const std::vector<int32_t> ids = skewed_ids(tokens, top_k, experts);
      const auto weights = random_floats(static_cast<size_t>(tokens * top_k), 151);
      const auto x = random_floats(static_cast<size_t>(tokens * hidden), 152);
      cuda::Stream stream(0);
      cuda::DeviceBuffer dx = put_dev(x), di = put_dev(ids), dw = put_dev(weights);
      const auto out_bytes = static_cast<size_t>(tokens * hidden) * 4;
      cuda::DeviceBuffer grouped(0, out_bytes), pairwise(0, out_bytes),
          act(0, static_cast<size_t>(tokens * top_k * inter) * 4),
          work(0, static_cast<size_t>(cuda::moe_grouped_scratch_bytes(up.table, tokens, hidden, top_k)));
      const auto* xp = static_cast<const float*>(dx.data());
      const auto* ip = static_cast<const int32_t*>(di.data());
      const auto* wp = static_cast<const float*>(dw.data());
      cuda::moe_by_pairs(stream, up.table, xp, tokens, hidden, ip, wp, top_k, static_cast<float*>(act.data()),
                         tokens * top_k * inter, static_cast<float*>(pairwise.data()));
      stream.synchronize();
      std::vector<float> a(static_cast<size_t>(tokens * hidden)), b(a.size());
      pairwise.download(b.data(), out_bytes);
      using cuda::GroupedTiles, cuda::TensorCoreMath;
      for (auto [tiles, math] : {std::pair{GroupedTiles::cuda_cores, TensorCoreMath::bf16},
                                 std::pair{GroupedTiles::tensor_cores, TensorCoreMath::bf16},
                                 std::pair{GroupedTiles::tensor_cores, TensorCoreMath::tf32x3},
                                 std::pair{GroupedTiles::automatic, TensorCoreMath::bf16}}) {
        cuda::moe_grouped(stream, up.table, xp, tokens, hidden, ip, wp, top_k, work.data(),
                          static_cast<float*>(grouped.data()), tiles, math);
        stream.synchronize();
        grouped.download(a.data(), out_bytes);
        const bool tensor_cores = tiles == GroupedTiles::tensor_cores ||
                                  (tiles == GroupedTiles::automatic &&
                                   tokens * top_k >= cuda::kGroupedTensorCorePairs * experts);
        const bool bf16 = tensor_cores && math == TensorCoreMath::bf16, tf32x3 = tensor_cores && !bf16;
        INFO(type_name(gate_type) << " / " << type_name(down_type) << ", " << tokens << " tokens, "
                                  << (bf16 ? "bf16 tiles" : tf32x3 ? "3xTF32 tiles" : "CUDA cores"));
        // The CUDA-core tiles add in the pairwise kernel's order. The 3xTF32 tiles (float32 promotion)
        // add in another order: 1.4e-5 to 1.6e-5 measured on the H200 before promotion. The bf16 tiles
        // round both operands to 8-bit mantissas.
        const double error = relative_error(a, b);
        CHECK(error < (bf16 ? 1e-2 : tf32x3 ? 3e-5 : 1e-6));
      }
    }
  }
}

TEST_CASE("cuda routed experts on int8 activations (dp4a) equal the float arithmetic on those activations",
          "[cuda][q8]") {
  // The integer products multiply exactly the values quantize_q8_reference dequantises to. Gate and up:
  // the quantised path on x equals the float path on x's codes (per 32) within float rounding. Down:
  // the output equals Σ weight · down_e · codes (per 8) of the SiLU-GLU outputs the device wrote, in
  // double on the host from the dequantised rows. Against the float path on x itself it differs by
  // the quantisation (and must differ: else it did not run).
  // The host definition refuses a length that is not whole groups, and a group of 0 (it runs without a GPU).
  std::vector<float> scratch(40);
  CHECK_THROWS_AS(cuda::quantize_q8_reference(scratch.data(), 40, 32, scratch.data()), Error);
  CHECK_THROWS_AS(cuda::quantize_q8_reference(scratch.data(), 40, 0, scratch.data()), Error);
  if (!have_gpu()) return;
  const int64_t experts = 16, top_k = 4, tokens = 3;
  uint32_t seed = 160;
  for (DType gate_type : {DType::q4_k, DType::q6_k})
    for (DType down_type : {DType::q4_k, DType::q6_k})
      for (auto [hidden, inter] : {std::pair<int64_t, int64_t>{512, 256}, {1280, 768}, {2048, 512}}) {
        // 1,280 and 768: a last wide unit of four Q4_K blocks cut short
        const RandomExperts random = random_experts(gate_type, down_type, experts, hidden, inter, seed += 7);
        const UploadedExperts up = upload_experts(random.weights);
        REQUIRE(cuda::pairwise_q8_applies(up.table, hidden));
        const std::vector<int32_t> ids = skewed_ids(tokens, top_k, experts);
        const auto weights = random_floats(static_cast<size_t>(tokens * top_k), seed + 1);
        const auto x = random_floats(static_cast<size_t>(tokens * hidden), seed + 2);
        std::vector<float> x_codes(x.size());
        cuda::quantize_q8_reference(x.data(), static_cast<int64_t>(x.size()), 32, x_codes.data());
        cuda::Stream stream(0);
        cuda::DeviceBuffer di = put_dev(ids), dw = put_dev(weights);
        const int64_t act_values = tokens * top_k * inter;
        // Every matrix 4 bytes into its buffer: Q4_K rows miss the 16-byte alignment of the int8 readers.
        const UploadedExperts shifted = upload_experts(random.weights, 4);
        auto run = [&](const std::vector<float>& input, bool quantised, const UploadedExperts& uploaded) {
          const int64_t act_floats = cuda::pairwise_act_floats(uploaded.table, hidden, tokens * top_k, quantised);
          CHECK(act_floats >= act_values + (quantised ? act_values / 2 : 0));  // codes, scales and sums
          cuda::DeviceBuffer dx = put_dev(input), out(0, input.size() * 4), act(0, static_cast<size_t>(act_floats) * 4);
          cuda::moe_by_pairs(stream, uploaded.table, static_cast<const float*>(dx.data()), tokens, hidden,
                             static_cast<const int32_t*>(di.data()), static_cast<const float*>(dw.data()), top_k,
                             static_cast<float*>(act.data()), act_floats, static_cast<float*>(out.data()), quantised);
          stream.synchronize();
          std::vector<float> a(static_cast<size_t>(act_values)), o(input.size());
          act.download(a.data(), a.size() * 4);
          out.download(o.data(), o.size() * 4);
          return std::pair{a, o};
        };
        {  // an act buffer sized for the float path is refused with the int8 path, before any launch
          cuda::DeviceBuffer dx = put_dev(x), out(0, x.size() * 4), act(0, static_cast<size_t>(act_values) * 4);
          CHECK_THROWS_AS(cuda::moe_by_pairs(stream, up.table, static_cast<const float*>(dx.data()), tokens, hidden,
                                             static_cast<const int32_t*>(di.data()), static_cast<const float*>(dw.data()),
                                             top_k, static_cast<float*>(act.data()), act_values,
                                             static_cast<float*>(out.data()), true),
                          Error);
        }
        const auto [q8_act, q8_out] = run(x, true, up);
        const auto [codes_act, codes_out] = run(x_codes, false, up);
        const auto [float_act, float_out] = run(x, false, up);
        std::vector<float> act_codes(q8_act.size());
        cuda::quantize_q8_reference(q8_act.data(), act_values, 8, act_codes.data());
        std::vector<float> expected(x.size(), 0.f), row(static_cast<size_t>(inter));
        const int64_t down_row = *row_bytes(down_type, inter);
        for (int64_t t = 0; t < tokens; ++t)
          for (int64_t o = 0; o < hidden; ++o) {
            double sum = 0;
            for (int64_t s = 0; s < top_k; ++s) {
              const int32_t e = ids[static_cast<size_t>(t * top_k + s)];
              const auto* bytes = static_cast<const uint8_t*>(random.weights.down[static_cast<size_t>(e)].weight.data);
              dequantize_row(down_type, bytes + o * down_row, row.data(), inter);
              double dot = 0;
              for (int64_t i = 0; i < inter; ++i)
                dot += double(row[static_cast<size_t>(i)]) * act_codes[static_cast<size_t>((t * top_k + s) * inter + i)];
              sum += double(weights[static_cast<size_t>(t * top_k + s)]) * dot;
            }
            expected[static_cast<size_t>(t * hidden + o)] = static_cast<float>(sum);
          }
        INFO(type_name(gate_type) << " / " << type_name(down_type) << ", hidden " << hidden << ", intermediate " << inter);
        CHECK(relative_error(q8_act, codes_act) < 1e-5);
        CHECK(relative_error(q8_out, expected) < 1e-5);
        const double act_quantisation = relative_error(q8_act, float_act), quantisation = relative_error(q8_out, float_out);
        CHECK(act_quantisation > 0);
        CHECK(act_quantisation < 2e-2);
        CHECK(relative_error(codes_out, q8_out) > 0);  // the down codes differ from the float outputs
        CHECK(quantisation < 3e-2);
        // Rows off alignment: Q4_K gate/up and down rows take the float dots (on x, on act) one row at a
        // time, bit for bit the float kernels on the same rows; Q6_K rows keep the int8 products.
        const auto [off_q8_act, off_q8_out] = run(x, true, shifted);
        const auto [off_float_act, off_float_out] = run(x, false, shifted);
        CHECK(off_q8_act == (gate_type == DType::q4_k ? off_float_act : q8_act));
        if (gate_type == DType::q4_k && down_type == DType::q4_k) CHECK(off_q8_out == off_float_out);
        if (gate_type == DType::q6_k && down_type == DType::q6_k) CHECK(off_q8_out == q8_out);
        // Dependent launch, with the down rows asked of L2 before the wait: the same bits.
        stream.set_dependent_launch(true);
        REQUIRE(stream.prefetch_ahead());
        const auto [ahead_act, ahead_out] = run(x, true, up);
        CHECK(ahead_act == q8_act);
        CHECK(ahead_out == q8_out);
      }
}

TEST_CASE("cuda add_rms_norm_linears: the norm folded into a decode token's linears equals the two steps, and the "
          "CPU's", "[cuda][q8]") {
  // One launch normalises the residual row in every block and writes the sum and the normalised row
  // back (the last block to arrive writes the sum); it must give what add_rms_norm then linears give,
  // twice in a row (the block counter left at zero), with and without the residual add, on the float
  // and the int8 (dp4a) kernels — with mixed types the first run of one type folding the norm and
  // the others reading the row it writes, and the two steps for more than one token.
  if (!have_gpu()) return;
  struct Group {
    std::vector<DType> types;
    std::vector<int64_t> outs;
    int64_t in;
  };
  const Group groups[] = {{{DType::q4_k, DType::q4_k, DType::q4_k}, {4096, 512, 512}, 2048},  // q, k, v
                          {{DType::f32}, {128}, 2048},                                          // a router
                          {{DType::q6_k}, {130}, 768},
                          {{DType::q4_k}, {64}, 7168},  // DeepSeek-V3's width
                          {{DType::bf16, DType::bf16}, {300, 7}, 512},
                          {{DType::q4_k, DType::q6_k}, {256, 96}, 1024}};
  uint32_t seed = 1300;
  for (const Group& g : groups) {
    std::vector<test::OwnedWeight> ws;
    for (size_t i = 0; i < g.types.size(); ++i) ws.push_back(random_weight(g.types[i], g.outs[i], g.in, ++seed));
    std::vector<const LinearWeight*> pointers;
    for (const auto& w : ws) pointers.push_back(&w.w);
    for (int64_t rows : {1, 3})
      for (bool add : {true, false})
        for (bool q8 : {false, true}) {
          const auto hidden = random_floats(static_cast<size_t>(rows * g.in), ++seed);
          const auto delta = random_floats(static_cast<size_t>(rows * g.in), ++seed);
          const auto norm = random_floats(static_cast<size_t>(g.in), ++seed);
          // Two steps in a row: the second adds delta to the first's sum.
          auto run = [&](Backend& be, bool fused) {
            DeviceBuffer dh = put(be, hidden), dd = put(be, delta), dn = put(be, norm),
                         normed = put(be, std::vector<float>(hidden.size(), -1.f));
            std::vector<DeviceBuffer> dys;
            std::vector<float*> ys;
            for (int64_t out : g.outs) {
              dys.push_back(be.allocate(static_cast<size_t>(rows * out) * sizeof(float)));
              ys.push_back(dys.back().as<float>());
            }
            const float* d = add ? dd.as<float>() : nullptr;
            for (int step = 0; step < 2; ++step) {
              if (fused) {
                be.add_rms_norm_linears(dh.as<float>(), d, dn.as<float>(), rows, g.in, 1e-6, normed.as<float>(),
                                        pointers.data(), ys.data(), static_cast<int>(ys.size()));
              } else {
                if (add)
                  be.add_rms_norm(dh.as<float>(), d, dn.as<float>(), rows, g.in, 1e-6, normed.as<float>());
                else
                  be.rms_norm(dh.as<float>(), dn.as<float>(), rows, g.in, g.in, 1e-6, normed.as<float>());
                be.linears(pointers.data(), ys.data(), static_cast<int>(ys.size()), normed.as<float>(), rows);
              }
            }
            std::vector<float> all;
            for (size_t i = 0; i < ys.size(); ++i) {
              const auto y = get(be, dys[i], static_cast<size_t>(rows * g.outs[i]));
              all.insert(all.end(), y.begin(), y.end());
            }
            return std::tuple{get(be, dh, hidden.size()), get(be, normed, hidden.size()), all};
          };
          Backends b;
          cuda_backend_set_decode_q8(*b.gpu, q8);
          cuda_backend_set_fused_norm(*b.gpu, true);
          INFO(type_name(g.types[0]) << " group of " << g.types.size() << ", width " << g.in << ", rows " << rows
                                     << (add ? ", with the add" : ", norm only") << (q8 ? ", int8" : ", float"));
          const auto [fused_sum, fused_normed, fused_ys] = run(*b.gpu, true);
          const auto [steps_sum, steps_normed, steps_ys] = run(*b.gpu, false);
          const auto [cpu_sum, cpu_normed, cpu_ys] = run(*b.cpu, false);
          CHECK(fused_sum == steps_sum);  // one float add per value and step
          CHECK(fused_sum == cpu_sum);
          CHECK(relative_error(fused_normed, steps_normed) < 1e-6);
          CHECK(relative_error(fused_ys, steps_ys) < 2e-6);
          // int8 codes of Q4_K/Q6_K rows against the CPU's float products: the quantisation's error
          const bool quantised = q8 && rows == 1 && (g.types[0] == DType::q4_k || g.types[0] == DType::q6_k);
          CHECK(relative_error(fused_ys, cpu_ys) < (quantised ? 2e-2 : 2e-5));
        }
  }
}

TEST_CASE("cuda decode linears on int8 activations (dp4a) equal the float kernel on those activations",
          "[cuda][q8]") {
  if (!have_gpu()) return;
  uint32_t seed = 900;
  cuda::Stream stream(0);
  for (DType t : {DType::q4_k, DType::q6_k})
    // q (4096 × 2048), a 512-row matrix (its rows split over warps), o (2048 × 4096), a width of one block,
    // rows that leave the last block of the launch part-empty
    for (auto [out, in] : {std::pair<int64_t, int64_t>{4096, 2048}, {512, 2048}, {2048, 4096}, {7, 256}, {130, 768}}) {
      const auto w = random_weight(t, out, in, ++seed, /*with_bias=*/true);
      const auto x = random_floats(static_cast<size_t>(in), ++seed);
      std::vector<float> x_codes(x.size());
      cuda::quantize_q8_reference(x.data(), in, 32, x_codes.data());
      // A copy of the weight 4 bytes into its buffer: Q4_K rows then miss the 16-byte alignment of the
      // wide loads and must take the float kernel.
      const auto* bytes = static_cast<const uint8_t*>(w.w.weight.data);
      std::vector<uint8_t> shifted_bytes(4, 0);
      shifted_bytes.insert(shifted_bytes.end(), bytes, bytes + w.w.weight.nbytes);
      cuda::DeviceBuffer dw = put_dev(std::vector<uint8_t>(bytes, bytes + w.w.weight.nbytes)),
                         shifted = put_dev(shifted_bytes), db = put_dev(w.bias);
      const auto run = [&](const std::vector<float>& input, bool quantised, bool misaligned = false) {
        cuda::DeviceBuffer dx = put_dev(input), dy(0, static_cast<size_t>(out) * 4);
        const void* base = misaligned ? static_cast<const char*>(shifted.data()) + 4 : dw.data();
        const cuda::DeviceWeight dev{t, base, out, in, nullptr, static_cast<const float*>(db.data())};
        cuda::linear(stream, dev, static_cast<const float*>(dx.data()), 1, static_cast<float*>(dy.data()),
                     cuda::TensorCoreMath::tf32x3, quantised);
        stream.synchronize();
        std::vector<float> y(static_cast<size_t>(out));
        dy.download(y.data(), y.size() * 4);
        return y;
      };
      const auto q8 = run(x, true), on_codes = run(x_codes, false), on_x = run(x, false);
      INFO(type_name(t) << " [" << out << ", " << in << "]");
      CHECK(relative_error(q8, on_codes) < 1e-5);
      const double quantisation = relative_error(q8, on_x);
      CHECK(quantisation > 0);
      CHECK(quantisation < 2e-2);
      if (t == DType::q4_k) CHECK(run(x, true, true) == run(x, false, true));  // the float kernel, bit for bit
      // In a group with others of its type and width (one launch), each output as alone.
      const auto w2 = random_weight(t, 96, in, ++seed);
      cuda::DeviceBuffer dw2 = put_dev(std::vector<uint8_t>(static_cast<const uint8_t*>(w2.w.weight.data),
                                                            static_cast<const uint8_t*>(w2.w.weight.data) + w2.w.weight.nbytes));
      cuda::DeviceBuffer dx = put_dev(x), dy1(0, static_cast<size_t>(out) * 4), dy2(0, 96 * 4);
      const cuda::DeviceWeight pair[2] = {{t, dw.data(), out, in, nullptr, static_cast<const float*>(db.data())},
                                          {t, dw2.data(), 96, in, nullptr, nullptr}};
      float* ys[2] = {static_cast<float*>(dy1.data()), static_cast<float*>(dy2.data())};
      const cuda::TensorCoreMath maths[2] = {cuda::TensorCoreMath::tf32x3, cuda::TensorCoreMath::tf32x3};
      cuda::linears(stream, pair, ys, 2, static_cast<const float*>(dx.data()), 1, maths, true);
      cuda::DeviceBuffer dy3(0, 96 * 4);
      cuda::linear(stream, pair[1], static_cast<const float*>(dx.data()), 1, static_cast<float*>(dy3.data()),
                   cuda::TensorCoreMath::tf32x3, true);
      stream.synchronize();
      std::vector<float> y1(static_cast<size_t>(out)), y2(96), y3(96);
      dy1.download(y1.data(), y1.size() * 4);
      dy2.download(y2.data(), y2.size() * 4);
      dy3.download(y3.data(), y3.size() * 4);
      // The same codes; the rows' splits over warps (and so the order of their partial sums) follow
      // the launch's row count.
      CHECK(relative_error(y1, q8) < 1e-6);
      CHECK(relative_error(y2, y3) < 1e-6);
    }
}

TEST_CASE("cuda routed experts through cuBLAS equal the bf16 grouped tiles and, within bf16 rounding, the pairs",
          "[cuda]") {
  if (!have_gpu()) return;
  cuda::BlasGemm blas(0);
  if (!blas.available()) {
    WARN("skipped: cuBLAS is not loadable here (" << blas.why_not() << ")");
    return;
  }
  const int64_t hidden = 512, inter = 256, experts = 16, top_k = 4, tokens = 300;
  for (auto [gate_type, down_type] : {std::pair{DType::q4_k, DType::q4_k}, std::pair{DType::q4_k, DType::q6_k},
                                      std::pair{DType::q8_0, DType::q8_0}, std::pair{DType::f8_e4m3, DType::f8_e4m3},
                                      std::pair{DType::bf16, DType::bf16}, std::pair{DType::iq4_xs, DType::q5_k}}) {
    const RandomExperts random = random_experts(gate_type, down_type, experts, hidden, inter, 160);
    const UploadedExperts up = upload_experts(random.weights);
    std::vector<int32_t> ids = skewed_ids(tokens, top_k, 13);  // experts 13-15 never hit
    ids[9] = static_cast<int32_t>(experts);  // outside the table: the pair adds nothing
    const auto weights = random_floats(static_cast<size_t>(tokens * top_k), 161);
    const auto x = random_floats(static_cast<size_t>(tokens * hidden), 162);
    cuda::Stream stream(0);
    cuda::DeviceBuffer dx = put_dev(x), di = put_dev(ids), dw = put_dev(weights);
    const auto out_bytes = static_cast<size_t>(tokens * hidden) * 4;
    cuda::DeviceBuffer out(0, out_bytes), act(0, static_cast<size_t>(tokens * top_k * inter) * 4),
        work(0, static_cast<size_t>(cuda::moe_grouped_scratch_bytes(up.table, tokens, hidden, top_k)));
    const auto* xp = static_cast<const float*>(dx.data());
    const auto* ip = static_cast<const int32_t*>(di.data());
    const auto* wp = static_cast<const float*>(dw.data());
    auto download = [&] {
      stream.synchronize();
      std::vector<float> v(static_cast<size_t>(tokens * hidden));
      out.download(v.data(), out_bytes);
      return v;
    };
    cuda::moe_by_pairs(stream, up.table, xp, tokens, hidden, ip, wp, top_k, static_cast<float*>(act.data()),
                       static_cast<int64_t>(act.bytes() / 4), static_cast<float*>(out.data()));
    const std::vector<float> pairwise = download();
    cuda::moe_grouped(stream, up.table, xp, tokens, hidden, ip, wp, top_k, work.data(), static_cast<float*>(out.data()),
                      cuda::GroupedTiles::tensor_cores, cuda::TensorCoreMath::bf16);
    const std::vector<float> tiles = download();
    const int64_t expert_bytes = 3 * inter * hidden * 2;
    cuda::MoeBlasOverlap overlap(0);
    for (int64_t chunk : {int64_t{1} << 30, 2 * expert_bytes, expert_bytes}) {  // one chunk, five, thirteen
      cuda::DeviceBuffer blas_work(0, static_cast<size_t>(cuda::moe_blas_scratch_bytes(up.table, tokens, hidden, top_k, chunk)));
      cuda::MoeBlasHost host;
      cuda::moe_blas(stream, blas, up.table, xp, tokens, hidden, ip, wp, top_k, blas_work.data(), host,
                     static_cast<float*>(out.data()), chunk);
      const std::vector<float> got = download();
      INFO(type_name(gate_type) << " / " << type_name(down_type) << ", weight chunks of " << chunk << " bytes");
      // The same bf16 operands as the tiles, in another accumulation order; the float32 pairs differ by
      // the bf16 rounding of both operands (the grouped test's bound).
      CHECK(relative_error(got, tiles) < 2e-3);
      CHECK(relative_error(got, pairwise) < 1e-2);
      // Dequantised on a second stream into two alternating buffers: the same GEMMs on the same
      // operands, so the same bits; twice, so that the second call's first chunks wait for the first's.
      for (int round = 0; round < 2; ++round) {
        stream.zero(out.data(), out_bytes);
        cuda::moe_blas(stream, blas, up.table, xp, tokens, hidden, ip, wp, top_k, blas_work.data(), host,
                       static_cast<float*>(out.data()), chunk, &overlap);
        CHECK(download() == got);
      }
    }
  }
}

TEST_CASE("cuda router top-k equals the CPU router for every router kind", "[cuda]") {
  // Shapes: small ones, the real models' (Qwen3 128 top 8; DeepSeek-V2 160 in 8 groups; V3 256 in 8
  // groups), more experts than a block's threads, and more than shared memory holds (the kernel's
  // arrays in scratch). Each also with values on a coarse grid, so that many experts tie, and the
  // sigmoid ones with NaN logits.
  if (!have_gpu()) return;
  Backends b;
  struct Shape {
    RouterKind kind;
    int64_t experts, top_k, n_group, topk_group;
  };
  const Shape shapes[] = {{RouterKind::softmax_topk, 60, 4, 1, 1},
                          {RouterKind::softmax_topk, 128, 8, 1, 1},
                          {RouterKind::softmax_topk, 1500, 3, 1, 1},
                          {RouterKind::softmax_topk, 3500, 5, 1, 1},
                          {RouterKind::softmax_group_topk, 60, 4, 4, 2},
                          {RouterKind::softmax_group_topk, 160, 6, 8, 3},
                          {RouterKind::sigmoid_noaux_tc, 64, 8, 4, 2},
                          {RouterKind::sigmoid_noaux_tc, 256, 8, 8, 4}};
  enum Values { plain, tied, with_nan };
  for (const Shape& shape : shapes)
    for (Values values : {plain, tied, with_nan})
      for (int64_t tokens : {1, 7, 70}) {
        // NaN logits: sigmoid scores only (a softmax's NaN spreads to every weight); NaN ranks last.
        if (values == with_nan && shape.kind != RouterKind::sigmoid_noaux_tc) continue;
        RoutingParams p;
        p.kind = shape.kind;
        p.experts = shape.experts;
        p.top_k = shape.top_k;
        p.norm_topk_prob = shape.kind != RouterKind::softmax_group_topk;
        p.routed_scaling_factor = shape.kind == RouterKind::sigmoid_noaux_tc ? 2.5 : 1.0;
        p.n_group = shape.n_group;
        p.topk_group = shape.topk_group;
        auto logits = random_floats(static_cast<size_t>(tokens * p.experts), 70 + static_cast<uint32_t>(tokens));
        auto bias = random_floats(static_cast<size_t>(p.experts), 71, 0.1f);
        if (values == tied) {
          for (float& v : logits) v = std::round(v * 4.f) / 4.f;
          for (float& v : bias) v = v > 0.f ? 0.05f : 0.f;
        }
        if (values == with_nan)
          for (size_t i = 3; i < logits.size(); i += 7) logits[i] = std::numeric_limits<float>::quiet_NaN();
        const bool with_bias = shape.kind == RouterKind::sigmoid_noaux_tc;
        const auto pairs = static_cast<size_t>(tokens * p.top_k);
        auto run = [&](Backend& be) {
          DeviceBuffer dl = put(be, logits), db = put(be, bias), ids = be.allocate(pairs * 4), w = be.allocate(pairs * 4);
          be.router_topk(p, dl.as<float>(), tokens, with_bias ? db.as<float>() : nullptr, ids.as<int32_t>(),
                         w.as<float>());
          return std::pair{get<int32_t>(be, ids, pairs), get(be, w, pairs)};
        };
        const auto [gpu_ids, gpu_w] = run(*b.gpu);
        const auto [cpu_ids, cpu_w] = run(*b.cpu);
        INFO("kind " << static_cast<int>(p.kind) << " experts " << p.experts << " top " << p.top_k << " groups "
                     << p.n_group << (values == tied ? " tied" : values == with_nan ? " with NaN" : "")
                     << " tokens " << tokens);
        CHECK(gpu_ids == cpu_ids);
        CHECK(relative_error(gpu_w, cpu_w) < 1e-6);
      }
}

TEST_CASE("cuda router_and_topk: a decode token's router matrix and top-k in one launch equal the two launches "
          "bit for bit, and the CPU's", "[cuda]") {
  // The block that writes its logits last routes the token (the router kernel's body): ids, weights,
  // logits and the folded norm's sum and row must equal the launches apart bit for bit — three times
  // in a row (the block counter left at zero), with the residual add, the norm alone and no norm
  // pending — for the routers of Qwen3 (128, top 8), DeepSeek-V2-Lite (64, top 6), DeepSeek-V3
  // (sigmoid, 256 in 8 groups, bias) and Mixtral (8, top 2). What one launch cannot take (more than
  // 256 experts, a BF16 router, 3 tokens) takes the two steps and equals them too. The CPU: the same
  // ids, weights within float rounding of the logits' sum order.
  if (!have_gpu()) return;
  struct Shape {
    RouterKind kind;
    int64_t experts, top_k, n_group, topk_group, in;
    DType type;
    bool one_launch;
  };
  const Shape shapes[] = {{RouterKind::softmax_topk, 128, 8, 1, 1, 2048, DType::f32, true},
                          {RouterKind::softmax_topk, 64, 6, 1, 1, 2048, DType::f32, true},
                          {RouterKind::sigmoid_noaux_tc, 256, 8, 8, 4, 7168, DType::f32, true},
                          {RouterKind::softmax_topk, 8, 2, 1, 1, 4096, DType::f32, true},
                          {RouterKind::softmax_topk, 300, 4, 1, 1, 512, DType::f32, false},
                          {RouterKind::softmax_topk, 128, 8, 1, 1, 1024, DType::bf16, false}};
  enum Norm { add_and_norm, norm_only, no_norm };
  uint32_t seed = 1900;
  for (const Shape& shape : shapes)
    for (Norm norm : {add_and_norm, norm_only, no_norm})
      for (int64_t tokens : {1, 3}) {
        RoutingParams p;
        p.kind = shape.kind;
        p.experts = shape.experts;
        p.top_k = shape.top_k;
        p.norm_topk_prob = true;
        p.routed_scaling_factor = shape.kind == RouterKind::sigmoid_noaux_tc ? 2.5 : 1.0;
        p.n_group = shape.n_group;
        p.topk_group = shape.topk_group;
        const auto router = random_weight(shape.type, shape.experts, shape.in, ++seed);
        const auto rows = static_cast<size_t>(tokens * shape.in);
        const auto hidden = random_floats(rows, ++seed), delta = random_floats(rows, ++seed);
        const auto norm_weight = random_floats(static_cast<size_t>(shape.in), ++seed);
        const auto bias = random_floats(static_cast<size_t>(shape.experts), ++seed, 0.1f);
        const bool with_bias = shape.kind == RouterKind::sigmoid_noaux_tc;
        const auto pairs = static_cast<size_t>(tokens * p.top_k);
        const auto run = [&](Backend& be) {
          DeviceBuffer dh = put(be, hidden), dd = put(be, delta), dn = put(be, norm_weight), db = put(be, bias),
                       normed = put(be, hidden), logits = be.allocate(static_cast<size_t>(tokens * p.experts) * 4),
                       ids = be.allocate(pairs * 4), weights = be.allocate(pairs * 4);
          NormFirst first;
          first.normed = normed.as<float>();
          if (norm != no_norm) {
            first.hidden = dh.as<float>();
            first.delta = norm == add_and_norm ? dd.as<float>() : nullptr;
            first.weight = dn.as<float>();
            first.dim = shape.in;
            first.eps = 1e-6;
          }
          for (int step = 0; step < 3; ++step)
            be.router_and_topk(p, router.w, first, tokens, logits.as<float>(), with_bias ? db.as<float>() : nullptr,
                               ids.as<int32_t>(), weights.as<float>());
          return std::tuple{get<int32_t>(be, ids, pairs), get(be, weights, pairs),
                            get(be, logits, static_cast<size_t>(tokens * p.experts)), get(be, dh, rows),
                            get(be, normed, rows)};
        };
        Backends b;
        cuda_backend_set_fused_router(*b.gpu, true);
        INFO(type_name(shape.type) << " router of " << shape.experts << " experts, top " << shape.top_k << ", width "
                                   << shape.in << ", " << tokens << " tokens, "
                                   << (norm == add_and_norm ? "add + norm" : norm == norm_only ? "norm" : "no norm"));
        const auto [one_ids, one_weights, one_logits, one_hidden, one_normed] = run(*b.gpu);
        cuda_backend_set_fused_router(*b.gpu, false);
        const auto [two_ids, two_weights, two_logits, two_hidden, two_normed] = run(*b.gpu);
        const auto [cpu_ids, cpu_weights, cpu_logits, cpu_hidden, cpu_normed] = run(*b.cpu);
        CHECK(one_ids == two_ids);
        CHECK(one_weights == two_weights);
        CHECK(one_logits == two_logits);
        CHECK(one_hidden == two_hidden);
        if (norm != no_norm && tokens == 1) CHECK(one_normed == two_normed);  // block 0's row, as norm_linears'
        CHECK(one_ids == cpu_ids);
        // 3 tokens: the CUDA add_rms_norm's row against the CPU's, a float rounding apart (1.3e-5 seen)
        CHECK(relative_error(one_weights, cpu_weights) < 5e-5);
        CHECK(relative_error(one_logits, cpu_logits) < 2e-6);
        CHECK(one_hidden == cpu_hidden);
        // The one launch was taken where it should be: the kernel's own entry says so, with the same bits.
        if (tokens != 1 || norm != no_norm) continue;
        cuda::Stream stream(0);
        const auto* bytes = static_cast<const uint8_t*>(router.w.weight.data);
        cuda::DeviceBuffer dw = put_dev(std::vector<uint8_t>(bytes, bytes + router.w.weight.nbytes)),
                           dx = put_dev(hidden), db = put_dev(bias), dl(0, static_cast<size_t>(p.experts) * 4),
                           di(0, pairs * 4), dwt(0, pairs * 4), counter = put_dev(std::vector<uint32_t>{0u});
        cuda::RouteAfter route;
        route.spec = {static_cast<int>(p.kind), p.experts, p.top_k, p.n_group, p.topk_group, p.norm_topk_prob,
                      p.routed_scaling_factor};
        route.bias = with_bias ? static_cast<const float*>(db.data()) : nullptr;
        route.ids = static_cast<int32_t*>(di.data());
        route.weights = static_cast<float*>(dwt.data());
        route.arrivals = static_cast<unsigned*>(counter.data());
        const bool taken = cuda::linear_route(stream, cuda::DeviceWeight{shape.type, dw.data(), p.experts, shape.in},
                                              static_cast<float*>(dl.data()), {}, static_cast<const float*>(dx.data()),
                                              route);
        CHECK(taken == shape.one_launch);
        if (!taken) continue;
        stream.synchronize();
        std::vector<int32_t> kernel_ids(pairs);
        std::vector<float> kernel_weights(pairs);
        std::vector<uint32_t> left(1, 7u);
        di.download(kernel_ids.data(), pairs * 4);
        dwt.download(kernel_weights.data(), pairs * 4);
        counter.download(left.data(), 4);
        CHECK(kernel_ids == one_ids);
        CHECK(kernel_weights == one_weights);
        CHECK(left[0] == 0u);
      }
}

TEST_CASE("cuda split_deferred_experts equals the CPU backend", "[cuda][deferral]") {
  if (!have_gpu()) return;
  Backends b;
  for (auto [tokens_, top_k_] : {std::pair<int64_t, int64_t>{1, 2}, {70, 8}, {300, 6}}) {
    const int64_t tokens = tokens_, top_k = top_k_;
    std::vector<int32_t> ids(static_cast<size_t>(tokens * top_k));
    auto weights = random_floats(ids.size(), 90);
    for (size_t i = 0; i < ids.size(); ++i) {
      ids[i] = static_cast<int32_t>(i % 61);
      weights[i] = std::round(weights[i] * 4.f) / 4.f;  // coarse, so ties happen
    }
    for (int64_t defer = 1; defer < top_k; ++defer) {
      const auto kept = static_cast<size_t>(tokens * (top_k - defer)), deferred = static_cast<size_t>(tokens * defer);
      auto run = [&](Backend& be) {
        DeviceBuffer di = put(be, ids), dw = put(be, weights), ki = be.allocate(kept * 4), kw = be.allocate(kept * 4),
                     qi = be.allocate(deferred * 4), qw = be.allocate(deferred * 4);
        be.split_deferred_experts(di.as<int32_t>(), dw.as<float>(), tokens, top_k, defer, ki.as<int32_t>(),
                                  kw.as<float>(), qi.as<int32_t>(), qw.as<float>());
        return std::tuple{get<int32_t>(be, ki, kept), get(be, kw, kept), get<int32_t>(be, qi, deferred),
                          get(be, qw, deferred)};
      };
      INFO("tokens " << tokens << " top_k " << top_k << " defer " << defer);
      CHECK(run(*b.gpu) == run(*b.cpu));
    }
  }
}

TEST_CASE("cuda add, gated_add and gather_rows equal the CPU backend", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  for (auto [rows_, width_] : {std::pair<int64_t, int64_t>{1, 64}, {9, 1000}, {130, 2048}}) {
    const int64_t rows = rows_, width = width_;  // the lambda below captures them
    const auto x = random_floats(static_cast<size_t>(rows * width), 60), y = random_floats(x.size(), 61);
    const auto gate = random_floats(static_cast<size_t>(rows), 62, 3.f);
    std::vector<int32_t> pick;
    for (int64_t r = rows - 1; r >= 0; r -= 2) pick.push_back(static_cast<int32_t>(r));
    auto run = [&](Backend& be) {
      DeviceBuffer dx = put(be, x), dy = put(be, y), dg = put(be, gate), dp = put(be, pick);
      DeviceBuffer sum = be.allocate(x.size() * 4), acc = put(be, x), acc1 = put(be, x);
      DeviceBuffer rows_out = be.allocate(pick.size() * static_cast<size_t>(width) * 4);
      DeviceBuffer slice = be.allocate(static_cast<size_t>(rows * 8) * 4);
      be.add(dx.as<float>(), dy.as<float>(), rows * width, sum.as<float>());
      be.gated_add(acc.as<float>(), dy.as<float>(), dg.as<float>(), rows, width);
      be.gated_add(acc1.as<float>(), dy.as<float>(), nullptr, rows, width);
      be.gather_rows(dx.as<float>(), width, dp.as<int32_t>(), static_cast<int64_t>(pick.size()), width,
                     rows_out.as<float>(), width);
      be.gather_rows(dx.as<float>() + 3, width, nullptr, rows, 8, slice.as<float>(), 8);
      return std::vector<std::vector<float>>{get(be, sum, x.size()), get(be, acc, x.size()), get(be, acc1, x.size()),
                                             get(be, rows_out, pick.size() * static_cast<size_t>(width)),
                                             get(be, slice, static_cast<size_t>(rows * 8))};
    };
    const auto gpu = run(*b.gpu), cpu = run(*b.cpu);
    INFO("rows " << rows << " width " << width);
    CHECK(gpu[0] == cpu[0]);
    CHECK(relative_error(gpu[1], cpu[1]) < 1e-6);  // the sigmoid's expf may differ by an ulp
    CHECK(gpu[2] == cpu[2]);
    CHECK(gpu[3] == cpu[3]);
    CHECK(gpu[4] == cpu[4]);
  }
}

TEST_CASE("cuda backend buffers: copies, events and pinned host memory", "[cuda]") {
  if (!have_gpu()) return;
  Backends b;
  const auto x = random_floats(5000, 80);
  DeviceBuffer d = put(*b.gpu, x), e = b.gpu->allocate(x.size() * 4), pinned = b.gpu->allocate_host(x.size() * 4);
  CHECK(d.device() == Device::cuda(0));
  CHECK(pinned.pinned_host());
  b.gpu->copy(e.data(), d.data(), x.size() * 4);
  b.gpu->copy_to_host(pinned.data(), e.data(), x.size() * 4);
  auto event = b.gpu->create_event();
  b.gpu->record(*event);
  event->synchronize();
  CHECK(std::memcmp(pinned.data(), x.data(), x.size() * 4) == 0);
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

TEST_CASE("cuda expert cache: the split equals the host's, held experts' pairs equal the CPU's, a new choice "
          "copies in only what changed",
          "[cuda][expert-cache]") {
  if (!have_gpu()) return;
  Backends b;
  const int64_t hidden = 256, inter = 512, count = 8, top_k = 4;
  for (const auto& [gate_type, down_type] : {std::pair{DType::q4_k, DType::q6_k}, std::pair{DType::q8_0, DType::q8_0}}) {
    b.gpu = make_cuda_backend(0);
    cuda_backend_set_prefill_bf16(*b.gpu, false);  // 80 tokens go to the tiles: float32-accurate ones here
    const RandomExperts random = random_experts(gate_type, down_type, count, hidden, inter, 70);
    const ExpertWeights& ew = random.weights;
    for (const std::vector<int32_t>& holding : {std::vector<int32_t>{1, 4, 6}, std::vector<int32_t>{6, 2, 7}}) {
      REQUIRE(b.gpu->cache_experts(ew, holding));
      std::vector<int32_t> map(static_cast<size_t>(count), 0);
      for (const int32_t e : holding) map[static_cast<size_t>(e)] = 1;
      for (const int64_t tokens : {1, 5, 80}) {  // pair by pair, grouped
        const int64_t pairs = tokens * top_k;
        std::vector<int32_t> ids(static_cast<size_t>(pairs));
        for (int64_t t = 0; t < tokens; ++t)
          for (int64_t s = 0; s < top_k; ++s)
            ids[static_cast<size_t>(t * top_k + s)] = static_cast<int32_t>((t * 5 + s * 3 + t / 3) % count);
        const auto weights = random_floats(static_cast<size_t>(pairs), 71);
        const auto x = random_floats(static_cast<size_t>(tokens * hidden), 72);
        // The split, on the GPU and on the host (counts added to what is there).
        std::vector<uint32_t> counts(static_cast<size_t>(count), 3);
        DeviceBuffer di = put(*b.gpu, ids), held = b.gpu->allocate(ids.size() * 4), rest = b.gpu->allocate(ids.size() * 4),
                     dc = put(*b.gpu, counts);
        b.gpu->split_cached_experts(ew, di.as<int32_t>(), pairs, held.as<int32_t>(), rest.as<int32_t>(),
                                    dc.as<uint32_t>());
        std::vector<int32_t> host_held(ids.size()), host_rest(ids.size());
        split_cached_experts(ids.data(), pairs, map.data(), count, host_held.data(), host_rest.data(), counts.data());
        INFO(type_name(gate_type) << "/" << type_name(down_type) << " tokens " << tokens);
        CHECK(get<int32_t>(*b.gpu, held, ids.size()) == host_held);
        CHECK(get<int32_t>(*b.gpu, rest, ids.size()) == host_rest);
        CHECK(get<uint32_t>(*b.gpu, dc, counts.size()) == counts);
        // The held pairs on the GPU against the CPU's same pairs (the rest given weight 0).
        DeviceBuffer dx = put(*b.gpu, x), dw = put(*b.gpu, weights), out = b.gpu->allocate(x.size() * 4);
        b.gpu->moe_routed_experts(ew, dx.as<float>(), tokens, hidden, held.as<int32_t>(), dw.as<float>(), top_k,
                                  out.as<float>());
        std::vector<float> held_weights = weights;
        for (size_t p = 0; p < ids.size(); ++p)
          if (host_held[p] < 0) held_weights[p] = 0.f;
        DeviceBuffer cx = put(*b.cpu, x), ci = put(*b.cpu, ids), cw = put(*b.cpu, held_weights),
                     cout = b.cpu->allocate(x.size() * 4);
        b.cpu->moe_routed_experts(ew, cx.as<float>(), tokens, hidden, ci.as<int32_t>(), cw.as<float>(), top_k,
                                  cout.as<float>());
        CHECK(relative_error(get(*b.gpu, out, x.size()), get(*b.cpu, cout, x.size())) < 2e-5);
      }
    }
    CHECK_THROWS_AS(b.gpu->cache_experts(ew, std::vector<int32_t>{1, 2, 3, 4}), Error);  // over the capacity
    CHECK_THROWS_AS(b.gpu->cache_experts(ew, std::vector<int32_t>{1, 1}), Error);
    CHECK_THROWS_AS(b.gpu->cache_experts(ew, std::vector<int32_t>{8}), Error);
  }
  // Experts of mixed types are declined: nothing held.
  RandomExperts mixed = random_experts(DType::q8_0, DType::q8_0, 4, hidden, inter, 80);
  const RandomExperts other = random_experts(DType::bf16, DType::q8_0, 1, hidden, inter, 90);
  mixed.weights.gate[2] = other.weights.gate[0];
  mixed.weights.up[2] = other.weights.up[0];
  CHECK_FALSE(b.gpu->cache_experts(mixed.weights, std::vector<int32_t>{0, 1}));
  CHECK_FALSE(b.cpu->cache_experts(mixed.weights, std::vector<int32_t>{0, 1}));
}
