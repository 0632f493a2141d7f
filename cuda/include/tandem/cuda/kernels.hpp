#pragma once
// CUDA kernels over device pointers, enqueued on a Stream. Activations are float32 row-major;
// weights stay in their stored type (the same bytes as in the file), as on the CPU, and are
// dequantised in registers. No CUDA headers here: host code includes this with any C++20 compiler.
//
// Weight types the kernels read (weight_type_supported): f32, f16, bf16, f8_e4m3 (with 128×128
// block scales), q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, iq4_nl, iq4_xs. Others throw
// Error(unsupported).
#include <cstdint>

#include "tandem/cuda/cuda_device.hpp"
#include "tandem/kv/kv_type.hpp"
#include "tandem/tensor/dtype.hpp"

namespace tandem::cuda {

bool weight_type_supported(DType t) noexcept;

// A weight matrix [out_features, in_features] in device memory, rows of row_bytes(type, in).
struct DeviceWeight {
  DType type = DType::f32;
  const void* data = nullptr;
  int64_t out_features = 0, in_features = 0;
  const float* block_scales = nullptr;  // FP8: [ceil(out/128), ceil(in/128)], else null
  const float* bias = nullptr;          // [out_features] or null
};

// How the tensor-core tiles of prefill multiply: operands rounded to bf16 (the default: ~1.6e-3 of an
// output's RMS), or each float split into two TF32 parts and three products summed (float32 accuracy,
// about a third of the speed).
enum class TensorCoreMath { bf16, tf32x3 };

// y[rows, out] = x[rows, in] · Wᵀ (+ bias). A GEMV per output row and tile of up to 8 tokens: one
// warp streams the row once, dequantising 32 values at a time in registers; from 32 tokens (inputs a
// multiple of 64 wide) tiles on the tensor cores, multiplying as `math` says.
// quantised_x: one token (rows == 1) over Q4_K/Q6_K rows multiplies x quantised per 32 values
// (quantize_q8_reference's codes) by dp4a; other shapes and types are unaffected.
void linear(Stream& stream, const DeviceWeight& w, const float* x, int64_t rows, float* y,
            TensorCoreMath math = TensorCoreMath::bf16, bool quantised_x = false);
// ys[i] = x · ws[i]ᵀ for `count` matrices of one input: consecutive ones the decode kernel takes, of
// one type and width, are read by one launch (a layer's q, k and v); the rest as linear() each, with
// maths[i].
void linears(Stream& stream, const DeviceWeight* ws, float* const* ys, int count, const float* x, int64_t rows,
             const TensorCoreMath* maths, bool quantised_x = false);
// One decode token's add + RMSNorm folded into the linears that read its result: hidden += delta
// (when delta is given), normed = RMSNorm(hidden) · weight (add_rms_norm's values), then
// ys[i] = normed · ws[i]ᵀ — one launch instead of two. `arrivals` is a zeroed device counter the
// launch leaves zeroed (its blocks count themselves in before hidden is written back); one per
// stream. False, with nothing enqueued, where the matrices do not share one decode launch (types,
// widths, alignment, more than four, a row too wide for shared memory): the caller runs the two steps.
struct AddRmsNorm {
  float* hidden = nullptr;
  const float* delta = nullptr;
  const float* weight = nullptr;
  int64_t dim = 0;
  double eps = 0;
  float* normed = nullptr;
  unsigned* arrivals = nullptr;
};
bool norm_linears(Stream& stream, const DeviceWeight* ws, float* const* ys, int count, const AddRmsNorm& norm,
                  bool quantised_x = false);
// The same as linear() without scales or bias (kept for callers holding a bare stored matrix).
void linear(Stream& stream, DType weight_type, const void* weight, int64_t out_features, int64_t in_features,
            const float* x, int64_t rows, float* y);

// out[r - row_begin] = W[r] as float32 for r in [row_begin, row_end) (FP8 block scales applied).
void dequantize_rows(Stream& stream, const DeviceWeight& w, int64_t row_begin, int64_t row_end, float* out);
// out [out_features, in_features] = the whole weight rounded to bf16 (FP8 block scales applied), and
// out [count] = x rounded to bf16: the operands of a large-batch GEMM (BlasGemm).
void dequantize_bf16(Stream& stream, const DeviceWeight& w, void* out);
void round_bf16(Stream& stream, const float* x, int64_t count, void* out);

// out[t] = table[ids[t]] dequantised; table [rows, width] stored as `type`; ids on the device and
// checked by the caller.
void embedding(Stream& stream, DType type, const void* table, int64_t width, const int32_t* ids, int64_t count,
               float* out);

// out[r·stride + i] = x[r·stride + i] / rms(x[r·stride, +dim)) · weight[i] (sum of squares in double,
// as the CPU reference). In place when out == x.
void rms_norm(Stream& stream, const float* x, const float* weight, int64_t rows, int64_t dim, int64_t stride,
              double eps, float* out);
// The contiguous form (stride == dim), single-precision eps.
void rms_norm(Stream& stream, const float* x, const float* weight, int64_t rows, int64_t dim, float eps,
              float* out);
// hidden += delta (rows·dim values), then out = RMSNorm(hidden) over rows of dim: the residual add and
// the next norm in one launch, each value read once.
void add_rms_norm(Stream& stream, float* hidden, const float* delta, const float* weight, int64_t rows, int64_t dim,
                  double eps, float* out);

// Rotary embedding in place, as RotaryEmbedding::apply: vector h of token t at data + t·row_stride +
// h·head_stride; positions [rows] and inv_freq [rotary_dim / 2] (float64, the CPU's table) on the
// device. neox: pairs (i, i + d/2); else (2i, 2i + 1). cos/sin are scaled by attention_factor.
void rope(Stream& stream, float* data, int64_t rows, int64_t row_stride, int64_t heads, int64_t head_stride,
          const int64_t* positions, const double* inv_freq, int64_t rotary_dim, bool neox,
          double attention_factor);
// rms_norm of each head_dim-wide vector by norm_weight (skipped when null), then rope, in place, over
// rows of heads·head_dim values: one launch for what is otherwise two (q/k norms of Qwen3).
void head_norm_rope(Stream& stream, float* data, int64_t rows, int64_t heads, int64_t head_dim,
                    const float* norm_weight, double eps, const int64_t* positions, const double* inv_freq,
                    int64_t rotary_dim, bool neox, double attention_factor);

// One layer of a paged KV cache as the attention kernels read it: block id b's rows of plane p,
// slot s are at layer_base + b·block_stride + (p·block_tokens + s)·row_bytes (the KvPool layout).
// An fp8/int8 row is its codes, then its f16 group scales (kv_quant.hpp), then rope_values values in
// f16: the MLA rope key (KvPoolSpec::rope_values), which stays unquantised. The kernels read the codes
// and scales in place (no dequantised copy of the cache); int4 has no CUDA kernel.
struct PagedKv {
  const void* layer_base = nullptr;
  KvType type = KvType::f32;
  int64_t block_tokens = 16;
  int64_t block_stride = 0;  // bytes
  int64_t row_bytes = 0;
  int64_t rope_values = 0;  // fp8/int8 MLA rows only; 0 otherwise
};

// The tokens of a batch on the device: token t sits at positions[t] of the sequence whose block ids
// are block_tables[t·table_stride, +ceil((positions[t] + 1) / block_tokens)).
struct DeviceBatch {
  int64_t tokens = 0;
  const int64_t* positions = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t table_stride = 0;
  int64_t max_context = 0;  // ≥ every positions[t] + 1 (sizes the score scratch)
  // Every token is of one sequence, at increasing positions (a prompt chunk): lets prefill attention
  // share each cached tile among a block of query tokens (flash_gqa_attention).
  bool one_sequence = false;
};

// Score scratch the attention kernels need: tokens · heads · max_context floats.
inline int64_t attention_scratch_floats(const DeviceBatch& b, int64_t heads) {
  return b.tokens * heads * b.max_context;
}

// Causal GQA attention (ops/attention.hpp semantics): q [tokens, heads·head_dim] roped; the K plane
// (0) and V plane (1) hold kv_heads·head_dim values per row. out [tokens, heads·head_dim].
// Shapes with head_dim 64/128/256 and at most 32 query heads per KV head run as split-K flash
// decoding (a block per token, KV head and split of the positions; results within float rounding of
// the reference, whose softmax sums in double); others, and gqa_attention_unsplit always, one block
// per (token, head). scores: gqa_attention_scratch_floats of scratch.
void gqa_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q, int64_t heads,
                   int64_t kv_heads, int64_t head_dim, float softmax_scale, float* scores, float* out);
void gqa_attention_unsplit(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q,
                           int64_t heads, int64_t kv_heads, int64_t head_dim, float softmax_scale, float* scores,
                           float* out);
int64_t gqa_attention_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_heads, int64_t head_dim);

// Causal GQA attention of one sequence's prompt chunk on the tensor cores (flash attention: a block
// per 64 query tokens and head, 64-position K/V tiles copied as stored into shared memory, online
// softmax in float32, mma.sync for Q·Kᵀ and P·V). Q and the probabilities are rounded to the cache's
// type (f16: 2⁻¹¹, bf16: 2⁻⁸ relative); K and V are used exactly (fp8/int8: dequantised into f16 tiles,
// 2⁻¹¹ relative, and Q and P in f16). Applies when flash_attention_supported: batch.one_sequence, at
// least 64 tokens, an f16, bf16, fp8 or int8 cache, head_dim 64 or 128, 16-byte aligned f16/bf16 rows.
// Given scratch of flash_attention_scratch_floats (0 when the grid is wide enough unsplit), a chunk of
// few query tiles over a long context (a prefix hit's suffix) splits the cached positions among blocks
// and merges the splits, within float rounding of the unsplit kernel; null scratch: never split.
bool flash_attention_supported(const DeviceBatch& b, int64_t heads, int64_t kv_heads, int64_t head_dim,
                               const PagedKv& kv);
int64_t flash_attention_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t head_dim);
void flash_gqa_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q, int64_t heads,
                         int64_t kv_heads, int64_t head_dim, float softmax_scale, float* scratch, float* out);

// MLA attention of one sequence's prompt chunk in multi-head form on the tensor cores: the context's
// latent rows (positions [0, batch.max_context), max_context = the last token's position + 1) are
// expanded through kv_b (`math`) into per-head K = [k_nope | cached k_rope] and V rows in the cache's
// 16-bit type (f16 for an fp8/int8 cache, whose rope key is stored in f16), then flash_gqa_attention's kernel runs with one KV head per query head. q [tokens,
// heads·(nope + rope)] (rope part rotated, unabsorbed); out [tokens, heads·v]: what
// mla_absorb_query, mla_attention and mla_expand_values give together. Applies when
// flash_mla_supported: as flash_attention_supported, and DeepSeek's nope 128, rope 64, v 128.
// scratch: flash_mla_scratch_bytes (~0.9 GB for 128 heads at 4k positions).
bool flash_mla_supported(const DeviceBatch& b, int64_t heads, int64_t nope, int64_t rope, int64_t v, int64_t kv_lora,
                         const PagedKv& kv);
size_t flash_mla_scratch_bytes(const DeviceBatch& b, int64_t heads, int64_t kv_lora);
void flash_mla_prefill(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const DeviceWeight& kv_b,
                       TensorCoreMath math, const float* q, int64_t heads, int64_t nope, int64_t rope, int64_t v,
                       int64_t kv_lora, float softmax_scale, void* scratch, float* out);

// Absorbed MLA attention over the latent cache (one plane: kv_lora latent then rope key).
// q_latent [tokens, heads, kv_lora], q_rope [tokens, heads, rope_dim]; out [tokens, heads, kv_lora].
// Latents of at most 1024 values (any cache kind but int4) run as split-K flash decoding (a block per
// token, group of 8 heads and split of the positions, each staged row shared by the group); others,
// and mla_attention_unsplit always, one block per (token, head). scores: mla_attention_scratch_floats.
// f16/bf16 caches of kv_lora 128, 256 or 512 (rope_dim a multiple of 16, 16-byte aligned rows) split
// on the tensor cores instead (mla_attention_tensor_cores: groups of up to 64 heads, Q and the
// probabilities rounded to the cache's type — f16 2⁻¹¹, bf16 2⁻⁸ relative — float32 accumulation);
// TANDEM_CUDA_MLA_TC=0 in the environment (read at each call) keeps them on the float32 kernel.
void mla_attention(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                   const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                   float* scores, float* out);
void mla_attention_unsplit(Stream& stream, const PagedKv& kv, const DeviceBatch& batch, const float* q_latent,
                           const float* q_rope, int64_t heads, int64_t kv_lora, int64_t rope_dim, float softmax_scale,
                           float* scores, float* out);
int64_t mla_attention_scratch_floats(const DeviceBatch& b, int64_t heads, int64_t kv_lora);
// Whether mla_attention runs this case on the tensor cores now (TANDEM_CUDA_MLA_TC read as it would be).
bool mla_attention_tensor_cores(const DeviceBatch& b, int64_t heads, int64_t kv_lora, int64_t rope_dim,
                                const PagedKv& kv);

// MLA absorption from kv_b's stored rows [heads·(nope + v), kv_lora] (kv_lora a multiple of 32, at
// most 1024): q_latent[t, h] = W_K(h)ᵀ · q[t, h, :nope] for q [tokens, heads·(nope + rope)].
void mla_absorb_query(Stream& stream, const DeviceWeight& kv_b, int64_t heads, int64_t nope, int64_t rope, int64_t v,
                      int64_t kv_lora, const float* q, int64_t tokens, float* q_latent);
// out[t, h·v + i] = W_V(h)[i] · attended[t, h] for attended [tokens, heads, kv_lora].
void mla_expand_values(Stream& stream, const DeviceWeight& kv_b, int64_t heads, int64_t nope, int64_t v,
                       int64_t kv_lora, const float* attended, int64_t tokens, float* out);

// One layer's routed experts as device tables of per-expert pointers (each array [experts], in
// device memory), for kernels that pick the expert by an id they read on the device.
struct ExpertTable {
  int64_t experts = 0, intermediate = 0;
  DType gate_type = DType::f32, up_type = DType::f32, down_type = DType::f32;
  int64_t gate_row_bytes = 0, up_row_bytes = 0, down_row_bytes = 0;
  const void* const* gate = nullptr;  // [experts] → [intermediate, hidden] stored rows
  const void* const* up = nullptr;
  const void* const* down = nullptr;  // [experts] → [hidden, intermediate]
  const float* const* gate_scales = nullptr;  // FP8 block scales per expert, or null (all experts alike)
  const float* const* up_scales = nullptr;
  const float* const* down_scales = nullptr;
};

// The routed experts of few tokens, pair by pair: act [tokens·top_k, intermediate] is scratch;
// out[t] = Σ_s weights[t, s] · down_e(silu(gate_e · x[t]) · up_e · x[t]) with e = ids[t, s], the
// sum in slot order. Gate and up must share one stored type, x and act be 16-byte aligned
// (pairwise_aligned; the Q4_K/Q6_K rows read them as float4): Error(internal) otherwise.
// quantised_x: where pairwise_q8_applies (Q4_K or Q6_K gate and up, hidden a multiple of 256),
// gate and up multiply the token quantised per 32 values by dp4a, and where the down rows are Q4_K or
// Q6_K too (intermediate a multiple of 256) they multiply the SiLU-GLU outputs quantised per 8
// (quantize_q8_reference's codes). act holds act_floats floats, at least pairwise_act_floats(…)
// (Error(internal) otherwise).
bool pairwise_aligned(const float* x, const float* act) noexcept;
bool pairwise_q8_applies(const ExpertTable& table, int64_t hidden) noexcept;
int64_t pairwise_act_floats(const ExpertTable& table, int64_t hidden, int64_t pairs, bool quantised_x) noexcept;
void moe_by_pairs(Stream& stream, const ExpertTable& table, const float* x, int64_t tokens, int64_t hidden,
                  const int32_t* ids, const float* weights, int64_t top_k, float* act, int64_t act_floats,
                  float* out, bool quantised_x = false);
// The host definition of the device's activation quantisation (q8_activations.cuh): per `group`
// values (32 or 8) d = max|x| / 127 and q = round-to-even(x · (127 / max|x|)), both rounded as float;
// dequantised[i] = d · q (what the integer products multiply). n a multiple of group.
void quantize_q8_reference(const float* x, int64_t n, int64_t group, float* dequantised);

// The routed experts of many tokens (prefill), grouped by expert on the device: one launch for
// gate+up of every hit expert and one for the down projections, each expert's rows read once per
// tile of its pairs: 8 pairs on the CUDA cores (equal to moe_by_pairs bit for bit) or 64 on the
// tensor cores, multiplying as `math` says (3xTF32: float32 accuracy in another order). `automatic`
// takes the tensor cores when the experts average
// kGroupedTensorCorePairs pairs or more: on an H100 (Qwen3-30B-A3B's layer, bench_cuda_kernels)
// the CUDA cores took 1.53 ms at 4 pairs per expert and 5.5 ms at 16, the bf16 tiles 0.71 and 0.76.
// scratch: moe_grouped_scratch_bytes, 16-byte aligned. Gate and up must share one stored type.
enum class GroupedTiles { automatic, cuda_cores, tensor_cores };
inline constexpr int64_t kGroupedTensorCorePairs = 4;
int64_t moe_grouped_scratch_bytes(const ExpertTable& table, int64_t tokens, int64_t hidden, int64_t top_k);
void moe_grouped(Stream& stream, const ExpertTable& table, const float* x, int64_t tokens, int64_t hidden,
                 const int32_t* ids, const float* weights, int64_t top_k, void* scratch, float* out,
                 GroupedTiles tiles = GroupedTiles::automatic, TensorCoreMath math = TensorCoreMath::bf16);

// out[i] = silu(gate[i]) · up[i].
void silu_glu(Stream& stream, const float* gate, const float* up, int64_t count, float* out);

// out[i] = a[i] + b[i] (the residual add; out may alias a).
void add(Stream& stream, const float* a, const float* b, int64_t count, float* out);

// dst[rows[i]·width, +width) = src[i·width, +width) for i < count (scatter of gathered rows).
void scatter_rows(Stream& stream, const float* src, const int32_t* rows, int64_t count, int64_t width, float* dst);

// out[t] = Σ_s weights[t·top_k + s] · slots[(t·top_k + s)·width, +width), summed in slot order
// (the MoE combine, as ops/moe.cpp). With slot_rows, slot (t, s) is row slot_rows[t·top_k + s] of
// slots instead, and a negative row adds nothing (a pair left out).
void weighted_sum_slots(Stream& stream, const float* slots, const float* weights, int64_t tokens, int64_t top_k,
                        int64_t width, float* out, const int32_t* slot_rows = nullptr);

// ---- the forward pass's glue between kernels (glue.cu) ----

// Writes row t of rows (row_stride floats apart, row_width values) into slot slots[t] of its
// sequence, plane `plane`: block block_tables[t·table_stride + slots[t] / block_tokens], converted
// to kv.type: f32, f16 or bf16 (round to nearest even), or fp8/int8 rows byte for byte as the CPU's
// kv_quant_encode_row writes them (the last kv.rope_values values in f16). Error(unsupported) for int4.
void kv_append(Stream& stream, void* layer_base, const PagedKv& kv, int64_t plane, int64_t tokens,
               const int64_t* slots, const int32_t* block_tables, int64_t table_stride, const float* rows,
               int64_t row_stride, int64_t row_width);
// kv_append of a GQA layer's K rows (plane 0) and V rows (plane 1) in one launch.
void kv_append_pair(Stream& stream, void* layer_base, const PagedKv& kv, int64_t tokens, const int64_t* slots,
                    const int32_t* block_tables, int64_t table_stride, const float* k_rows, const float* v_rows,
                    int64_t row_stride, int64_t row_width);

// A GQA layer between its projections and its attention, in one launch: q's `heads` and k's `kv_heads`
// heads normalised by q_norm / k_norm (none when null) and rotated, as head_norm_rope, then each
// token's rotated K row and its V row appended at its slot, as kv_append_pair (q, k, v rows contiguous).
// Only where gqa_prologue_fused holds (float KV types, head_dim ≤ 1024); callers otherwise make the
// three calls.
bool gqa_prologue_fused(KvType type, int64_t head_dim);
void gqa_prologue(Stream& stream, float* q, float* k, const float* v, int64_t tokens, int64_t heads, int64_t kv_heads,
                  int64_t head_dim, const float* q_norm, const float* k_norm, double eps, const int64_t* positions,
                  const double* inv_freq, int64_t rotary_dim, bool neox, double attention_factor, void* layer_base,
                  const PagedKv& kv, const int64_t* slots, const int32_t* block_tables, int64_t table_stride);

// One decode token's q, k and v projections (ws [3], into ys [3]; after the add + RMSNorm of `norm`
// where norm.hidden is set, as norm_linears; else over x) with the GQA prologue done by the same
// launches, as gqa_prologue: each value row written into the cache's plane 1, and each query and key
// head, once its rows are all written, normalised and rotated by the warp that wrote its last row (a
// key head also into plane 0). int8 activations (dp4a) over Q4_K/Q6_K rows: one launch where the three
// share a type, else one for the first run of one type (with the norm) and one for the rest (reading
// the row that launch normalised into norm.normed). False, with nothing enqueued, where these
// launches cannot do it: the caller runs the projections, then gqa_prologue.
struct GqaTail {
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  const float* q_norm = nullptr;  // or null: no norm
  const float* k_norm = nullptr;
  double eps = 0;
  const int64_t* rope_position = nullptr;  // the token's position for RoPE
  const double* inv_freq = nullptr;        // [half]
  int64_t half = 0;                        // rotary pairs
  bool neox = true;
  double attention_factor = 1.0;
  void* layer_base = nullptr;  // the layer's planes, laid out as kv says
  PagedKv kv;
  const int64_t* slot = nullptr;         // the token's cache slot
  const int32_t* block_table = nullptr;  // its sequence's block ids
  unsigned* arrivals = nullptr;          // heads + kv_heads counters, zero between launches
};
bool gqa_projections(Stream& stream, const DeviceWeight* ws, float* const* ys, const AddRmsNorm& norm, const float* x,
                     const GqaTail& tail);

// Routing as route_tokens_to_experts (ops/router.cpp), in double: a block per token, a thread per
// expert. kind: 0 softmax top-k, 1 softmax with group-limited choice (V2), 2 sigmoid with selection
// bias and grouped choice (V3), matching RouterKind's order. scratch: tokens · (2·experts + n_group +
// top_k) doubles.
struct RouterSpec {
  int kind = 0;
  int64_t experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
};
void router_topk(Stream& stream, const RouterSpec& spec, const float* logits, int64_t tokens,
                 const float* selection_bias, double* scratch, int32_t* expert_ids, float* weights);
// One decode token's router matrix (after the add + RMSNorm of `norm` where norm.hidden is set, as
// norm_linears; else over x) into logits, then its routing into ids and weights [top_k], as
// router_topk, in one launch: the block that writes its logits last routes. arrivals: a device
// counter, zero between launches. False, with nothing enqueued, where one launch cannot do it (a
// matrix other than F32 rows the lane kernel takes, more than 256 experts, a routing router_topk
// refuses): the caller runs the steps apart.
struct RouteAfter {
  RouterSpec spec;
  const float* bias = nullptr;  // selection bias [experts] or null
  int32_t* ids = nullptr;
  float* weights = nullptr;
  unsigned* arrivals = nullptr;
};
bool linear_route(Stream& stream, const DeviceWeight& router, float* logits, const AddRmsNorm& norm, const float* x,
                  const RouteAfter& route);

// Expert deferral's split of each token's routing, as split_deferred_experts (ops/expert_deferral.cpp):
// one thread per token; the caller checks 0 < defer < top_k <= 64.
void split_deferred_experts(Stream& stream, const int32_t* expert_ids, const float* weights, int64_t tokens,
                            int64_t top_k, int64_t defer, int32_t* kept_ids, float* kept_weights,
                            int32_t* deferred_ids, float* deferred_weights);

// The expert cache's split of routed pairs, as split_cached_experts
// (tandem/backend/cpu/reference/expert_cache_split.hpp); held_map [experts] nonzero where held; counts
// (uint32 [experts]) or null. An id outside [0, experts) goes to neither side (the host version throws).
void split_cached_experts(Stream& stream, const int32_t* expert_ids, int64_t pairs, const int32_t* held_map,
                          int64_t experts, int32_t* held, int32_t* rest, uint32_t* counts);

// acc[r, i] += g(r) · x[r, i]; g = sigmoid(gate_logits[r]) or 1 when gate_logits is null.
void gated_add(Stream& stream, float* acc, const float* x, const float* gate_logits, int64_t rows, int64_t width);

// dst[i·dst_stride, +width) = src[r·src_stride, +width), r = rows ? rows[i] : i.
void gather_rows(Stream& stream, const float* src, int64_t src_stride, const int32_t* rows, int64_t count,
                 int64_t width, float* dst, int64_t dst_stride);

}  // namespace tandem::cuda
