#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/launch.h"
#include "image/image.h"

namespace rfe {
namespace {

// Grid size cap of the grid-stride loop.
constexpr int64_t kMaxBlocks = 65535LL * 8;

struct Mean {
  float value[4];
};

// One thread per output value, so that the writes (4 bytes each) coalesce.
template <typename scalar_t>
__global__ void image_planes_kernel(int64_t total, int64_t channels, int64_t height, int64_t width, Mean mean,
                                    const scalar_t* __restrict__ in, float* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % width, y = (i / width) % height, c = (i / (width * height)) % channels;
    const int64_t b = i / (width * height * channels);
    out[i] = centred(in[((b * height + y) * width + x) * channels + c], mean.value[c]);
  }
}

at::Tensor image_planes_cuda(const at::Tensor& image, at::ArrayRef<double> mean_in) {
  const at::Tensor rows = image_planes_input(image, mean_in);
  c10::cuda::CUDAGuard guard(rows.device());
  at::Tensor planes = image_planes_output(image, rows);
  Mean mean{};
  for (size_t c = 0; c < mean_in.size(); ++c) mean.value[c] = static_cast<float>(mean_in[c]);
  const int64_t total = rows.numel();
  if (total > 0) {
    const int64_t blocks = blocks_for(total, kMaxBlocks);
    auto stream = at::cuda::getCurrentCUDAStream();
    const int64_t channels = rows.size(3), height = rows.size(1), width = rows.size(2);
    if (rows.scalar_type() == at::kByte) {
      image_planes_kernel<uint8_t><<<blocks, kThreads, 0, stream>>>(total, channels, height, width, mean,
                                                                    rows.data_ptr<uint8_t>(), planes.data_ptr<float>());
    } else {
      image_planes_kernel<float><<<blocks, kThreads, 0, stream>>>(total, channels, height, width, mean,
                                                                  rows.data_ptr<float>(), planes.data_ptr<float>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return planes;
}

}  // namespace

TORCH_LIBRARY_IMPL(retinaface_ext, CUDA, m) {
  m.impl("image_planes", &image_planes_cuda);
}

}  // namespace rfe
