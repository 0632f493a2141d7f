#pragma once
// A small GGUF v2/v3 writer for tests: builds files byte by byte from the spec, independently of the
// reader under test, so that splits and corruptions can be made on purpose.
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace tandem::test {

class GgufTestWriter {
 public:
  explicit GgufTestWriter(uint32_t version = 3, size_t alignment = 32) : version_(version), alignment_(alignment) {
    if (alignment != 32) kv_u32("general.alignment", static_cast<uint32_t>(alignment));
  }
  void kv_u32(const std::string& key, uint32_t v) { key_header(key, 4); put(v); }
  void kv_u16(const std::string& key, uint16_t v) { key_header(key, 2); put(v); }
  void kv_i32(const std::string& key, int32_t v) { key_header(key, 5); put(v); }
  void kv_f32(const std::string& key, float v) { key_header(key, 6); put(v); }
  void kv_bool(const std::string& key, bool v) { key_header(key, 7); put(static_cast<uint8_t>(v)); }
  void kv_string(const std::string& key, const std::string& v) { key_header(key, 8); put_string(kv_, v); }
  void kv_string_array(const std::string& key, const std::vector<std::string>& v) {
    key_header(key, 9);
    put(uint32_t{8});
    put(static_cast<uint64_t>(v.size()));
    for (const auto& s : v) put_string(kv_, s);
  }
  // An array of arrays of i32 (GGUF allows nesting).
  void kv_nested_i32(const std::string& key, const std::vector<std::vector<int32_t>>& v) {
    key_header(key, 9);
    put(uint32_t{9});
    put(static_cast<uint64_t>(v.size()));
    for (const auto& inner : v) {
      put(uint32_t{5});
      put(static_cast<uint64_t>(inner.size()));
      for (int32_t x : inner) put(x);
    }
  }
  // `depth` arrays, each holding the next, the innermost an empty i32 array.
  void kv_nested_empty(const std::string& key, int depth) {
    key_header(key, 9);
    for (int d = 1; d < depth; ++d) {
      put(uint32_t{9});
      put(uint64_t{1});
    }
    put(uint32_t{5});
    put(uint64_t{0});
  }
  void kv_u8_array(const std::string& key, uint64_t count, uint8_t value = 0) {
    key_header(key, 9);
    put(uint32_t{0});
    put(count);
    kv_.insert(kv_.end(), count, value);
  }
  void kv_i32_array(const std::string& key, uint64_t count, int32_t value = 0) {
    key_header(key, 9);
    put(uint32_t{5});
    put(count);
    for (uint64_t i = 0; i < count; ++i) put(value);
  }
  // `dims` outermost first, as the reader reports them; written innermost first as GGUF stores.
  void tensor(const std::string& name, std::vector<uint64_t> dims, uint32_t ggml_type, const std::vector<uint8_t>& bytes) {
    put_string(infos_, name);
    put_to(infos_, static_cast<uint32_t>(dims.size()));
    for (auto it = dims.rbegin(); it != dims.rend(); ++it) put_to(infos_, *it);
    put_to(infos_, ggml_type);
    while (data_.size() % alignment_) data_.push_back(0);
    put_to(infos_, static_cast<uint64_t>(data_.size()));
    data_.insert(data_.end(), bytes.begin(), bytes.end());
    ++n_tensors_;
  }

  // A tensor info with a chosen data offset and no data of its own (for corrupt files).
  void tensor_info_only(const std::string& name, std::vector<uint64_t> dims, uint32_t ggml_type, uint64_t offset) {
    put_string(infos_, name);
    put_to(infos_, static_cast<uint32_t>(dims.size()));
    for (auto it = dims.rbegin(); it != dims.rend(); ++it) put_to(infos_, *it);
    put_to(infos_, ggml_type);
    put_to(infos_, offset);
    ++n_tensors_;
  }

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    put_to(out, uint32_t{0x46554747});
    put_to(out, version_);
    put_to(out, n_tensors_);
    put_to(out, n_kv_);
    out.insert(out.end(), kv_.begin(), kv_.end());
    out.insert(out.end(), infos_.begin(), infos_.end());
    while (out.size() % alignment_) out.push_back(0);
    out.insert(out.end(), data_.begin(), data_.end());
    return out;
  }

  void write(const std::filesystem::path& p) const {
    const auto b = bytes();
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }

 private:
  template <typename T>
  static void put_to(std::vector<uint8_t>& out, T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out.insert(out.end(), b, b + sizeof(T));
  }
  template <typename T>
  void put(T v) { put_to(kv_, v); }
  static void put_string(std::vector<uint8_t>& out, const std::string& s) {
    put_to(out, static_cast<uint64_t>(s.size()));
    out.insert(out.end(), s.begin(), s.end());
  }
  void key_header(const std::string& key, uint32_t type) {
    put_string(kv_, key);
    put(type);
    ++n_kv_;
  }

  std::vector<uint8_t> kv_, infos_, data_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
  uint32_t version_;
  size_t alignment_;
};

}  // namespace tandem::test
