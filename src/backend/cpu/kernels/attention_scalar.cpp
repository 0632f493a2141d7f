// attend_keys for the scalar build (the body is attention_block_body.hpp, the same for every ISA).
#include "backend/cpu/kernels/attention_block_body.hpp"

namespace tandem::kernels::scalar {

void attend_keys(const AttendBlock& block) { attend_keys_body(block); }

}  // namespace tandem::kernels::scalar
