"""End-to-end detection speed on the shared WIDER FACE crowd photo with the published
MobileNet-0.25 checkpoint: our Detector against Pytorch_Retinaface's detect.py pipeline
(transcribed in tests/seed_reference.py), against a path built from
``retinaface_ext.ops.reference`` (unfused decode, reference NMS, no folding), and,
where installed, the Detector's onnxruntime engine against onnxruntime's bare forward of
the same exported graph, and its aoti engine against the bare AOTInductor package (timed
runs only: the package takes a minute to compile). The Detector's pre-processing, forward pass and
post-processing are also timed alone: what ``detect`` costs beyond them is per-call
overhead. On CUDA the Detector also runs in half precision and compiled.
``bench_detect_throughput`` detects a batch of 640x480 images in one call (32 on CUDA,
8 on the CPU) and prints images per second. ``bench_detect_levels`` runs the levels
settings (scales, flip, merge) over the five WIDER FACE val photos of ../shared in one call
each and prints their AP beside the time: the README's frontier table. ``bench_export`` times ``to_onnx`` and
reports the file's size.

    pytest --benchmark benchmarks/bench_detect.py

Read ratios inside one table. glibc's page faults on fresh activations cost about a
quarter of a forward pass here; run with MALLOC_MMAP_THRESHOLD_=1073741824
MALLOC_TRIM_THRESHOLD_=1073741824 (what ``retinaface_ext.runtime.reuse_freed_memory``
sets) to see the numbers without them.
"""

import copy
import pathlib

import cv2
import numpy as np
import pytest
import torch
from seed_reference import pytorch_retinaface_detect

from retinaface_ext import Detector, RetinaFace
from retinaface_ext.ops import reference
from retinaface_ext.priors import prior_boxes

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
CROWD = SHARED / "images" / "widerface_crowd.jpg"
pytestmark = pytest.mark.skipif(not (WEIGHTS.exists() and CROWD.exists()), reason="../shared missing")

VAL_PHOTOS = sorted((SHARED / "images" / "widerface_val").glob("*.jpg"))
SIZES = {"1024x624": None, "640x480": (640, 480)}
IMPLEMENTATIONS = [
    "detect",
    "detect_half",
    "detect_compiled",
    "prepare",
    "forward",
    "postprocess",
    "eager_forward",
    "pytorch_retinaface",
    "reference_path",
    "detect_onnxruntime",
    "onnxruntime_forward",
    "detect_aoti",
    "aoti_forward",
]
CUDA_ONLY = {
    "detect_half": "half precision runs on CUDA",
    "detect_compiled": "compiled on CUDA only (the CPU compile is tested once, in test_engines)",
}
CPU_ONLY = {"detect_onnxruntime", "onnxruntime_forward", "detect_aoti", "aoti_forward"}
THROUGHPUT_IMAGES = {"cpu": 8, "cuda": 32}


@pytest.fixture(scope="module")
def eager_model():
    return RetinaFace.from_checkpoint(WEIGHTS).eval()


@pytest.fixture(scope="module")
def eager_models(eager_model):
    """The eager model on each device, copied once (the fixture's own stays on the CPU)."""
    copies = {}
    return lambda device: copies.setdefault(str(device), copy.deepcopy(eager_model).to(device))


def crowd_image(size):
    image = cv2.imread(str(CROWD))
    return image if SIZES[size] is None else cv2.resize(image, SIZES[size], interpolation=cv2.INTER_LINEAR)


def reference_path(model, image, device, threshold=0.02, top_k=5000, nms_threshold=0.4, keep_top_k=750):
    """Detection from retinaface_ext.ops.reference: decode every prior, filter, sort, NMS."""
    with torch.inference_mode():
        x = torch.from_numpy(image).to(device).permute(2, 0, 1).float()
        x = (x - torch.tensor([104.0, 117.0, 123.0], device=device)[:, None, None])[None]
        loc, logits, landm = model(x)
        height, width = image.shape[:2]
        priors = prior_boxes((height, width), device=device)
        boxes = reference.decode(loc[0], priors) * torch.tensor([width, height] * 2, device=device)
        landmarks = reference.decode_landm(landm[0], priors) * torch.tensor([width, height] * 5, device=device)
        scores = torch.softmax(logits[0], dim=-1)[:, 1]
        passed = scores > threshold
        boxes, landmarks, scores = boxes[passed], landmarks[passed], scores[passed]
        order = torch.argsort(scores, descending=True)[:top_k]
        keep = reference.nms(boxes[order], scores[order], nms_threshold)[:keep_top_k]
        return boxes[order][keep], scores[order][keep], landmarks[order][keep]


@pytest.fixture(scope="module")
def onnx_network(eager_model, tmp_path_factory):
    """The network exported as the onnxruntime engine exports it (dynamic sizes)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from retinaface_ext.export import to_onnx

    path = tmp_path_factory.mktemp("onnx") / "mobilenet0.25.onnx"
    to_onnx(eager_model, path, check=False)
    return path


@pytest.fixture(scope="module")
def aoti_network(request, eager_model, tmp_path_factory):
    """The network as the aoti engine compiles it (dynamic sizes); a compile of about a
    minute, so only where the benchmarks are timed (or with --slow)."""
    if not (request.config.getoption("--benchmark") or request.config.getoption("--slow")):
        pytest.skip("compiles a .pt2 package: timed runs only (--benchmark), or --slow")
    from retinaface_ext.export import to_pt2

    path = tmp_path_factory.mktemp("pt2") / "mobilenet0.25.pt2"
    to_pt2(eager_model, path, postprocess=False, check=False)
    return path


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("size", list(SIZES))
def bench_detect(benchmark, request, synchronized, device, eager_model, eager_models, size, impl):
    if impl in CUDA_ONLY and device != "cuda":
        pytest.skip(CUDA_ONLY[impl])
    if impl == "detect_compiled" and size != "1024x624":
        pytest.skip("compiled at one size (each size is a compile)")
    if impl in CPU_ONLY and device != "cpu":
        pytest.skip(f"{impl} runs on the CPU only")
    image = crowd_image(size)
    benchmark.group = f"detect {device} mobilenet0.25 {size}"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    detector = Detector(eager_model, device=device)
    prepared = detector.network_input(image)
    if impl == "detect":
        fn = lambda: detector.detect(image)  # noqa: E731
    elif impl in ("detect_half", "detect_compiled"):
        variant = Detector(eager_model, device=device, half=impl == "detect_half", compile=impl == "detect_compiled")
        fn = lambda: variant.detect(image)  # noqa: E731
    elif impl == "prepare":
        fn = lambda: detector.prepare(image)  # noqa: E731
    elif impl == "forward":
        fn = lambda: detector.model(prepared)  # noqa: E731
    elif impl == "postprocess":
        with torch.inference_mode():
            outputs = detector.model(prepared)
        fn = lambda: detector.postprocess(*outputs, tuple(image.shape[:2]))  # noqa: E731
    elif impl == "eager_forward":
        model, plain = eager_models(device), prepared.contiguous()
        fn = lambda: model(plain)  # noqa: E731
    elif impl == "reference_path":
        model = eager_models(device)
        fn = lambda: reference_path(model, image, device)  # noqa: E731
    elif impl == "pytorch_retinaface":
        model = eager_models(device)
        fn = lambda: pytorch_retinaface_detect(model, image)  # noqa: E731
    elif impl == "detect_onnxruntime":
        engine = Detector(str(request.getfixturevalue("onnx_network")))
        fn = lambda: engine.detect(image)  # noqa: E731
    elif impl == "detect_aoti":
        engine = Detector(str(request.getfixturevalue("aoti_network")), device="cpu")
        fn = lambda: engine.detect(image)  # noqa: E731
    elif impl == "aoti_forward":  # the package alone, on the engine's input
        from retinaface_ext.export import load_pt2

        package, _ = load_pt2(request.getfixturevalue("aoti_network"))
        plain = prepared.contiguous()
        fn = lambda: package(plain)  # noqa: E731
    else:  # onnxruntime_forward: the engine's session alone, on the engine's input
        from retinaface_ext.inference.onnx_network import OnnxRuntimeNetwork

        session = OnnxRuntimeNetwork(request.getfixturevalue("onnx_network")).session
        feed = {"images": prepared.contiguous().numpy()}
        fn = lambda: session.run(None, feed)  # noqa: E731
    with torch.inference_mode():
        result = benchmark(synchronized(fn, device))
    assert result is not None


@pytest.mark.parametrize("impl", ["batched", "batched_half", "one_by_one", "pytorch_retinaface"])
def bench_detect_throughput(benchmark, synchronized, device, eager_model, eager_models, impl):
    """Many 640x480 images in one ``detect`` call (ours batched, in float32 and half) against
    the same images one by one (ours with batch_size=1; Pytorch_Retinaface's pipeline)."""
    if impl == "batched_half" and device != "cuda":
        pytest.skip("half precision runs on CUDA")
    count = THROUGHPUT_IMAGES[str(device)]
    image = crowd_image("640x480")
    images = [np.ascontiguousarray(np.roll(image, 20 * i, axis=1)) for i in range(count)]  # each its own
    benchmark.group = f"detect throughput {device} mobilenet0.25, {count} images of 640x480 per call"
    benchmark.extra_info["images"] = count
    if impl == "pytorch_retinaface":
        model = eager_models(device)
        fn = lambda: [pytorch_retinaface_detect(model, im) for im in images]  # noqa: E731
    else:
        detector = Detector(
            eager_model, device=device, half=impl == "batched_half", batch_size=1 if impl == "one_by_one" else count
        )
        fn = lambda: detector.detect(images)  # noqa: E731
    with torch.inference_mode():
        if impl == "pytorch_retinaface" and device == "cuda":  # seconds per call: fewer rounds
            found = benchmark.pedantic(synchronized(fn, device), rounds=3, iterations=1, warmup_rounds=1)
        else:
            found = benchmark(synchronized(fn, device))
    assert len(found) == count


@pytest.mark.parametrize("graph", ["network", "network+dcn", "network+postprocess"])
def bench_export(benchmark, eager_model, tmp_path, graph):
    """to_onnx with dynamic sizes, checked by onnxruntime where installed; the file size
    is in extra_info (``--benchmark-json``) and printed."""
    pytest.importorskip("onnxscript")
    from retinaface_ext.export import to_onnx

    benchmark.group = "to_onnx mobilenet0.25 (dynamic sizes)"
    model = RetinaFace.from_checkpoint(WEIGHTS, dcn=True) if graph == "network+dcn" else eager_model
    path = tmp_path / "model.onnx"
    report = benchmark.pedantic(
        lambda: to_onnx(model, path, postprocess=graph.endswith("postprocess")), rounds=2, iterations=1
    )
    benchmark.extra_info["size_bytes"] = report.size_bytes
    print(f"\n{graph}: {report}")


LEVELS = {
    "1x (default)": {},
    "1.5x": dict(scales=(1.5,)),
    "2x": dict(scales=(2,)),
    "1600/2150 (~2.1x)": dict(target_size=1600, max_size=2150),
    "1600/2150 + flip, nms": dict(target_size=1600, max_size=2150, flip=True),
    "1600/2150 + flip, vote": dict(target_size=1600, max_size=2150, flip=True, merge="vote"),
    "0.5,1,1.5,2, nms": dict(scales=(0.5, 1, 1.5, 2)),
    "0.5,1,1.5,2 + flip, nms": dict(scales=(0.5, 1, 1.5, 2), flip=True),
    "1,2.1, nms": dict(scales=(1, 2.1)),
    "1,2.1, vote": dict(scales=(1, 2.1), merge="vote"),
    "auto": dict(scales="auto"),
    "auto + flip, vote": dict(scales="auto", flip=True, merge="vote"),
    "1,2.5, vote (accurate)": dict(scales=(1, 2.5), merge="vote"),
}


@pytest.mark.skipif(not VAL_PHOTOS, reason="../shared/images/widerface_val missing")
@pytest.mark.parametrize("setting", list(LEVELS))
def bench_detect_levels(benchmark, synchronized, device, eager_model, setting):
    """The five val photos (176 faces) in one ``detect`` call per setting; AP@0.5 over all
    faces and the protocol's easy/medium/hard of these images, printed and in extra_info;
    the crowd photo's faces scored above 0.5."""
    from retinaface_ext.evaluation.ap import average_precision
    from retinaface_ext.evaluation.widerface import evaluate, load_ground_truth

    benchmark.group = f"detect levels {device} mobilenet0.25, the 5 WIDER FACE val photos per call"
    photos = [cv2.imread(str(path)) for path in VAL_PHOTOS]
    detector = Detector(eager_model, device=device, **LEVELS[setting])
    with torch.inference_mode():
        found = benchmark.pedantic(synchronized(lambda: detector.detect(photos), device), rounds=3, warmup_rounds=1)
        crowd = detector.detect(cv2.imread(str(CROWD)))
    truth = {image.name: image for image in load_ground_truth(SHARED / "widerface_gt").images}
    faces = [truth[path.stem].boxes for path in VAL_PHOTOS]
    all_faces = average_precision(
        [(f.boxes, f.scores) for f in found], [np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1) for b in faces]
    )
    rows = {}
    for path, f in zip(VAL_PHOTOS, found):
        boxes = f.boxes.cpu().double().numpy()
        rows[path.stem] = np.concatenate(
            [boxes[:, :2], boxes[:, 2:] - boxes[:, :2], f.scores.cpu().double().numpy()[:, None]], 1
        )
    protocol = evaluate(rows, load_ground_truth(SHARED / "widerface_gt"), predicted_only=True).ap
    benchmark.extra_info.update(ap50=all_faces, crowd_faces=int((crowd.scores > 0.5).sum()), **protocol)
    print(
        f"\n{setting}: AP@0.5 {all_faces:.3f} (176 faces); easy/medium/hard {protocol['easy']:.3f}/"
        f"{protocol['medium']:.3f}/{protocol['hard']:.3f}; crowd photo {int((crowd.scores > 0.5).sum())} faces > 0.5"
    )
