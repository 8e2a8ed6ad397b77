// retinaface_detect: the faces in one image, from a RetinaFace AOTInductor package made by
// `retinaface export --pt2 detector.pt2 --postprocess`, without Python.
//
//   retinaface_detect OPS_LIBRARY PACKAGE.pt2 IMAGE [--raw HEIGHT WIDTH] [--threshold T] [--cuda]
//
// OPS_LIBRARY is retinaface_ext's compiled ops (retinaface_ext/_C*.so): the package calls our
// detect_faces (and deform_conv2d) through the dispatcher, so they must be registered first.
// IMAGE is read with OpenCV when built with it; with --raw it is HEIGHT x WIDTH x 3 bytes of
// BGR pixels, row by row (what numpy's image.tobytes() writes for an OpenCV image).
#include <dlfcn.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#ifdef RETINAFACE_WITH_OPENCV
#include <opencv2/imgcodecs.hpp>
#endif

namespace {

constexpr int64_t kMaxSide = 8192;  // the largest side a dynamic package takes (to_pt2's MAX_SIDE)

struct Options {
  std::string ops, package, image;
  int64_t height = 0, width = 0;
  double threshold = 0.6;
  bool cuda = false;
};

// A whole number in [minimum, maximum], all of `text`; the error names the argument.
int64_t parse_count(const char* text, const char* name, int64_t minimum, int64_t maximum) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || errno == ERANGE || value < minimum || value > maximum) {
    throw std::runtime_error(std::string(name) + ": expected a whole number from " + std::to_string(minimum) + " to " +
                             std::to_string(maximum) + ", got '" + text + "'");
  }
  return value;
}

double parse_fraction(const char* text, const char* name) {
  errno = 0;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !(value >= 0.0 && value <= 1.0)) {
    throw std::runtime_error(std::string(name) + ": expected a number in [0, 1], got '" + text + "'");
  }
  return value;
}

Options parse(int argc, char** argv) {
  if (argc < 4) {
    throw std::runtime_error(
        "usage: retinaface_detect OPS_LIBRARY PACKAGE.pt2 IMAGE [--raw HEIGHT WIDTH] [--threshold T] [--cuda]");
  }
  Options options{argv[1], argv[2], argv[3]};
  for (int i = 4; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--raw" && i + 2 < argc) {
      // The package takes sides up to 8192: HEIGHT * WIDTH * 3 cannot overflow.
      options.height = parse_count(argv[++i], "--raw HEIGHT", 1, kMaxSide);
      options.width = parse_count(argv[++i], "--raw WIDTH", 1, kMaxSide);
    } else if (flag == "--threshold" && i + 1 < argc) {
      options.threshold = parse_fraction(argv[++i], "--threshold");
    } else if (flag == "--cuda") {
      options.cuda = true;
    } else {
      throw std::runtime_error("unknown argument: " + flag);
    }
  }
  return options;
}

// [1, 3, H, W] float32 BGR in 0..255, what the package takes.
at::Tensor read_image(const Options& options) {
  if (options.height > 0) {
    std::ifstream file(options.image, std::ios::binary);
    if (!file) throw std::runtime_error(options.image + ": cannot open it");
    std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (static_cast<int64_t>(bytes.size()) != options.height * options.width * 3) {
      throw std::runtime_error(options.image + ": expected " + std::to_string(options.height * options.width * 3) +
                               " bytes (--raw HEIGHT WIDTH, BGR), got " + std::to_string(bytes.size()));
    }
    return at::from_blob(bytes.data(), {options.height, options.width, 3}, at::kByte)
        .permute({2, 0, 1})
        .unsqueeze(0)
        .to(at::kFloat)
        .contiguous();
  }
#ifdef RETINAFACE_WITH_OPENCV
  cv::Mat image = cv::imread(options.image, cv::IMREAD_COLOR);
  if (image.empty()) throw std::runtime_error(options.image + ": OpenCV cannot read it");
  return at::from_blob(image.data, {image.rows, image.cols, 3}, at::kByte)
      .permute({2, 0, 1})
      .unsqueeze(0)
      .to(at::kFloat)
      .contiguous();
#else
  throw std::runtime_error("built without OpenCV: pass --raw HEIGHT WIDTH with raw BGR pixels");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Options options = parse(argc, argv);
    // RTLD_LAZY: the library's one Python entry point (PyInit__C) is never called here.
    if (dlopen(options.ops.c_str(), RTLD_LAZY | RTLD_GLOBAL) == nullptr) {
      throw std::runtime_error(std::string("cannot load the ops library: ") + dlerror());
    }
    // Loading a package runs its native code: its metadata, read from the archive as data,
    // must say it is a detector package of ours before the loader sees it.
    auto metadata = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(options.package, "model");
    if (metadata.count("retinaface_ext.outputs") == 0) {
      throw std::runtime_error(options.package + ": not a RetinaFace package made by retinaface_ext's to_pt2");
    }
    if (metadata["retinaface_ext.postprocess"] != "1") {
      throw std::runtime_error(options.package + ": not a package with post-processing (export it with --postprocess)");
    }
    torch::inductor::AOTIModelPackageLoader loader(options.package);
    at::Tensor images = read_image(options);
    if (options.cuda) images = images.to(at::kCUDA);
    std::vector<at::Tensor> outputs = loader.run({images});
    const at::Tensor boxes = outputs[0].cpu(), scores = outputs[1].cpu(), landmarks = outputs[2].cpu();
    const int64_t count = outputs[3].cpu().item<int64_t>();
    if (count < 0) throw std::runtime_error("the network's outputs are not finite");
    int64_t shown = 0;
    for (int64_t k = 0; k < count; ++k) {
      const float score = scores[k].item<float>();
      if (score < options.threshold) continue;
      const auto b = boxes[k];
      const auto l = landmarks[k];
      std::printf("face %lld: score %.4f box %.1f %.1f %.1f %.1f landmarks", static_cast<long long>(shown++), score,
                  b[0].item<float>(), b[1].item<float>(), b[2].item<float>(), b[3].item<float>());
      for (int64_t j = 0; j < 10; ++j) std::printf(" %.1f", l[j].item<float>());
      std::printf("\n");
    }
    std::printf("%lld faces (score >= %.2f)\n", static_cast<long long>(shown), options.threshold);
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "retinaface_detect: error: %s\n", error.what());
    return 2;
  }
}
