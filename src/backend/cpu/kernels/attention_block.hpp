#pragma once
// One block of keys of flash attention on the CPU: up to kAttendKeys cached keys and values of one
// KV head against the query rows that read that head (a prompt chunk's tokens × the head's query
// group), with the softmax kept online (running max, running sum, running weighted values), so a
// key block is widened and transposed once for every row that reads it. Built once per ISA from one
// source (attention_block_body.hpp); the reference attention (backend/cpu/reference/attention.cpp)
// is what tests compare it with.
#include <cstdint>

#include "backend/cpu/kernels/isa_level.hpp"

namespace tandem::kernels {

inline constexpr int64_t kAttendKeys = 16;
inline constexpr int64_t kAttendMaxRows = 128;  // query rows of one block at most

struct AttendBlock {
  int64_t rows = 0;                   // at most kAttendMaxRows
  int64_t key_dim = 0;                // query and key width (GQA: head_dim; MLA: kv_lora + rope)
  int64_t value_dim = 0;              // a multiple of 16 (GQA: head_dim; MLA: kv_lora)
  const float* const* q = nullptr;    // [rows]: each row's query (key_dim values)
  const int64_t* visible = nullptr;   // [rows]: keys of this block row r may read: c < visible[r] (0..16)
  const float* keys_t = nullptr;      // [key_dim][kAttendKeys]: the block's keys, transposed
  const float* values = nullptr;      // [kAttendKeys][value_dim]
  float scale = 1.0f;                 // softmax scale, applied to the dot products
  float* max = nullptr;               // [rows]: running maximum score (-inf before the first block)
  float* sum = nullptr;               // [rows]: running sum of exp(score - max)
  float* acc = nullptr;               // [rows][value_dim]: running Σ exp(score - max) · value
  float* scores = nullptr;            // [rows][kAttendKeys]: workspace
};

using AttendKeysFn = void (*)(const AttendBlock&);

namespace scalar {
void attend_keys(const AttendBlock& block);
}
namespace avx2 {
void attend_keys(const AttendBlock& block);
}
namespace avx512 {
void attend_keys(const AttendBlock& block);
}

// The attend_keys built for `level` (amx uses the avx512 one).
AttendKeysFn attend_keys_for(IsaLevel level) noexcept;

}  // namespace tandem::kernels
