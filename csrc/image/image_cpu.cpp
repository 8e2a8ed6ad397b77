// image_planes on the CPU: one pass from channels-last pixels to float planes, on the
// calling thread. Deliberately serial: the pass is bound by memory (about 0.8 ms for a
// 1024x624 image), and a parallel loop here wakes torch's OpenMP workers, which then
// spin on the cores that onnxruntime's forward right after it needs (measured: +1.7 ms
// on a 17 ms forward with 2 cores).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "image/image.h"

// Vector variants of the three-channel loop for x86-64 (GCC picks one at load time);
// the default build targets SSE2, which deinterleaves triples poorly.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RFE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
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
