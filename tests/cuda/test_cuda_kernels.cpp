// CUDA kernels against the CPU reference (formats' dequantize_row + double accumulation).
// Runs on the GPU machine; skips, saying so, where there is no GPU.
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "support/fixtures.hpp"
#include "tandem/cuda/kernels.hpp"
#include "tandem/formats/dequantize.hpp"
#include "tandem/formats/gguf.hpp"

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
