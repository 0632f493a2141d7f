#pragma once
// A model's identity: what the KV disk tier tags each record with, so KV one model computed is
// never taken for another's — across processes too. xxHash3-64 over the config, the tensor table
// (every tensor's name, type, shape and size) and a sample of the weights themselves (the first
// 4 KiB of up to 64 tensors spread over the table): a fine-tune with the same shapes differs in
// every weight, so in the sample. Cheap: no full read of the weights (a few hundred KiB at most).
#include <cstdint>

#include "tandem/model/model_files.hpp"

namespace tandem {

uint64_t model_identity(const ModelFiles& files);

}  // namespace tandem
