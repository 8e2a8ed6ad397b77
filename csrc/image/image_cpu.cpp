// image_planes on the CPU: one pass from channels-last pixels to float planes, on the
// calling thread. Deliberately serial. The pass is bound by memory (about 1 ms for a
// 1024x624 image after a forward pass has flushed the caches), and both ways of adding
// a core cost the onnxruntime forward that follows more than they save (2 cores,
// measured): after at::parallel_for torch's OpenMP workers spin on the cores, +1.7 ms
// on a 17 ms forward; a thread of its own for half the rows saved 0.25 ms here and
// cost that forward 0.5 ms.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <vector>

#include "image/image.h"

// Vector variants of the three-channel loop for x86-64 (GCC picks one at load time);
// the default build targets SSE2, which deinterleaves triples poorly. With AVX-512 the
// planes are written with streaming stores of whole cache lines (from a row staged in
// L1), which skip reading the lines first: 0.99 -> 0.76 ms at 1024x624 after a forward
// pass, and no slower a forward after it (16-byte SSE streaming stores gained nothing).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RFE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define RFE_STREAMING_STORES 1
#include <immintrin.h>
#else
#define RFE_CPU_CLONES
#endif

namespace rfe {
namespace {

template <typename scalar_t>
RFE_CPU_CLONES void three_channel_row(const scalar_t* __restrict in, int64_t width, float m0, float m1, float m2,
                                      float* __restrict out0, float* __restrict out1, float* __restrict out2) {
  for (int64_t x = 0; x < width; ++x) {
    out0[x] = centred(in[3 * x], m0);
    out1[x] = centred(in[3 * x + 1], m1);
    out2[x] = centred(in[3 * x + 2], m2);
  }
}

#ifdef RFE_STREAMING_STORES
__attribute__((target("avx512f"))) void stream_row(const float* __restrict source, int64_t count,
                                                   float* __restrict destination) {
  int64_t i = 0;
  for (; i < count && (reinterpret_cast<uintptr_t>(destination + i) & 63); ++i) destination[i] = source[i];
  for (; i + 16 <= count; i += 16) _mm512_stream_ps(destination + i, _mm512_loadu_ps(source + i));
  for (; i < count; ++i) destination[i] = source[i];
}

// Narrower rows stay on plain stores (a line-aligned stream needs room to pay off).
constexpr int64_t kStreamWidth = 64;

bool can_stream() {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
}
#endif

template <typename scalar_t>
void any_channel_row(const scalar_t* in, int64_t width, int64_t channels, const float* mean, float* out,
                     int64_t plane) {
  for (int64_t x = 0; x < width; ++x)
    for (int64_t c = 0; c < channels; ++c) out[c * plane + x] = centred(in[channels * x + c], mean[c]);
}

template <typename scalar_t>
void fill_planes(const at::Tensor& rows, const float* mean, float* out) {
  const int64_t batch = rows.size(0), height = rows.size(1), width = rows.size(2), channels = rows.size(3);
  const int64_t plane = height * width;
  const scalar_t* in = rows.data_ptr<scalar_t>();
#ifdef RFE_STREAMING_STORES
  if (channels == 3 && width >= kStreamWidth && can_stream()) {
    std::vector<float> staged(3 * width);
    float* s = staged.data();
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t y = 0; y < height; ++y) {
        three_channel_row(in + (b * height + y) * width * 3, width, mean[0], mean[1], mean[2], s, s + width,
                          s + 2 * width);
        for (int64_t c = 0; c < 3; ++c) stream_row(s + c * width, width, out + (b * 3 + c) * plane + y * width);
      }
    }
    _mm_sfence();  // the streaming stores are weakly ordered: visible before the op returns
    return;
  }
#endif
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t y = 0; y < height; ++y) {
      const scalar_t* row = in + (b * height + y) * width * channels;
      float* first = out + b * channels * plane + y * width;
      if (channels == 3) {
        three_channel_row(row, width, mean[0], mean[1], mean[2], first, first + plane, first + 2 * plane);
      } else {
        any_channel_row(row, width, channels, mean, first, plane);
      }
    }
  }
}

at::Tensor image_planes_cpu(const at::Tensor& image, at::ArrayRef<double> mean_in) {
  const at::Tensor rows = image_planes_input(image, mean_in);
  at::Tensor planes = image_planes_output(image, rows);
  float mean[4];
  for (size_t c = 0; c < mean_in.size(); ++c) mean[c] = static_cast<float>(mean_in[c]);
  if (rows.scalar_type() == at::kByte) {
    fill_planes<uint8_t>(rows, mean, planes.data_ptr<float>());
  } else {
    fill_planes<float>(rows, mean, planes.data_ptr<float>());
  }
  return planes;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CPU, m) {
  m.impl("image_planes", &image_planes_cpu);
}

}  // namespace rfe
