"""The RetinaFace network: checkpoint compatibility, folding, padding, DCN."""

import copy
import pathlib

import pytest
import torch

from retinaface_ext.models import (
    MOBILENET_025,
    RESNET50,
    PaddingMask,
    RetinaFace,
    config_for,
    fold_batchnorm,
    read_state_dict,
)

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
MNET_WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
RESNET_KEYS = SHARED / "expected" / "resnet50_state_dict.txt"
needs_weights = pytest.mark.skipif(not MNET_WEIGHTS.exists(), reason="../shared/weights missing")


def randomise_batchnorm(model, seed=0):
    """Give every BatchNorm non-trivial statistics, so that folding and padding matter."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def mnet():
    return RetinaFace.from_checkpoint(MNET_WEIGHTS).eval()


@needs_weights
def test_published_checkpoint_loads_strictly(mnet):
    state_dict = torch.load(MNET_WEIGHTS, map_location="cpu", weights_only=True)
    assert mnet.config.backbone == "mobilenet0.25" and not mnet.dcn
    assert mnet.num_parameters() == 426_608
    for key, value in mnet.state_dict().items():
        if key in state_dict:
            assert torch.equal(value, state_dict[key]), key


def test_parameter_counts():
    assert RetinaFace("mobilenet0.25").num_parameters() == 426_608
    assert RetinaFace("resnet50").num_parameters() == 27_293_600


@pytest.mark.skipif(not RESNET_KEYS.exists(), reason="../shared/expected missing")
def test_resnet50_state_dict_matches_pytorch_retinaface_key_for_key():
    expected = []
    for line in RESNET_KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            expected.append((key, () if shape == "scalar" else tuple(int(v) for v in shape.split("x"))))
    ours = [(key, tuple(value.shape)) for key, value in RetinaFace("resnet50").state_dict().items()]
    assert ours == expected


def test_presets_are_the_published_configurations():
    assert MOBILENET_025.image_size == 640 and RESNET50.image_size == 840
    assert MOBILENET_025.out_channels == 64 and RESNET50.out_channels == 256
    for preset in (MOBILENET_025, RESNET50):
        assert preset.min_sizes == ((16, 32), (64, 128), (256, 512))
        assert preset.steps == (8, 16, 32) and preset.variances == (0.1, 0.2)
        assert preset.loc_weight == 2.0
    assert config_for("Resnet50") is RESNET50 and config_for("mobilenet0.25") is MOBILENET_025
    with pytest.raises(ValueError, match="backbone must be one of"):
        config_for("vgg16")


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_output_shapes_follow_the_priors(backbone):
    from retinaface_ext.priors import prior_boxes

    model = RetinaFace(backbone).eval()
    with torch.inference_mode():
        loc, logits, landm = model(torch.randn(2, 3, 100, 70))
    priors = prior_boxes((100, 70))
    assert loc.shape == (2, priors.shape[0], 4)
    assert logits.shape == (2, priors.shape[0], 2)
    assert landm.shape == (2, priors.shape[0], 10)


@needs_weights
def test_dataparallel_prefix_and_wrapped_checkpoints_load(tmp_path, mnet):
    state_dict = read_state_dict(MNET_WEIGHTS)
    prefixed = tmp_path / "prefixed.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state_dict.items()}}, prefixed)
    model = RetinaFace.from_checkpoint(prefixed)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), mnet.state_dict().values()))


def test_checkpoint_of_the_other_backbone_is_named_in_the_error(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(RetinaFace("resnet50").state_dict(), path)
    with pytest.raises(ValueError, match=r"resnet50 RetinaFace, the model is mobilenet0.25.*missing keys"):
        RetinaFace("mobilenet0.25").load_checkpoint(path)
    with pytest.raises(ValueError, match="resnet50"):
        RetinaFace.from_checkpoint(path, backbone="mobilenet0.25")


def test_missing_unexpected_and_mis_shaped_keys_are_listed():
    model = RetinaFace("mobilenet0.25")
    state_dict = dict(model.state_dict())
    del state_dict["fpn.merge1.0.weight"]
    state_dict["extra.weight"] = torch.zeros(1)
    state_dict["ClassHead.0.conv1x1.bias"] = torch.zeros(6)
    with pytest.raises(ValueError) as error:
        RetinaFace("mobilenet0.25").load_checkpoint(state_dict)
    message = str(error.value)
    assert "1 missing keys: fpn.merge1.0.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "ClassHead.0.conv1x1.bias (checkpoint [6], model [4])" in message


def test_unreadable_and_unsafe_checkpoints_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        RetinaFace.from_checkpoint(tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth: not a readable PyTorch checkpoint"):
        RetinaFace.from_checkpoint(garbage)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": pathlib.PurePosixPath("/etc")}, unsafe)  # needs full unpickling
    with pytest.raises(ValueError, match="unsafe.pth"):
        RetinaFace.from_checkpoint(unsafe)
    not_retinaface = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, not_retinaface)
    with pytest.raises(ValueError, match="not a RetinaFace checkpoint"):
        RetinaFace.from_checkpoint(not_retinaface)


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_folding_batchnorm_keeps_the_outputs(backbone):
    torch.manual_seed(0)
    reference = randomise_batchnorm(RetinaFace(backbone)).eval()
    folded = fold_batchnorm(copy.deepcopy(reference))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    x = torch.randn(1, 3, 96, 128) * 50
    with torch.inference_mode():
        for a, b in zip(reference(x), folded(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(RetinaFace(backbone).train())


def test_folding_a_deformable_ssh_keeps_the_outputs():
    torch.manual_seed(0)
    reference = randomise_batchnorm(RetinaFace("mobilenet0.25", dcn=True))
    for module in reference.modules():
        if hasattr(module, "conv_offset"):
            torch.nn.init.normal_(module.conv_offset.weight, std=0.01)
    reference.eval()
    folded = fold_batchnorm(copy.deepcopy(reference))
    x = torch.randn(1, 3, 64, 96) * 50
    with torch.inference_mode():
        for a, b in zip(reference(x), folded(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def inside_priors(model, sizes, canvas):
    from retinaface_ext.inference.postprocess import inside_priors as mask

    return mask(model.config, sizes, canvas, "cpu").bool()


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_padded_batch_equals_each_image_alone(backbone):
    """The padding mask makes a canvas of differently sized images give each image the
    outputs it gets alone; without it the borders differ (so the test can fail)."""
    torch.manual_seed(0)
    model = randomise_batchnorm(RetinaFace(backbone)).eval()
    sizes = [(70, 101), (97, 64), (33, 45)]
    canvas = (97, 101)
    images = [torch.randn(3, h, w) * 50 for h, w in sizes]
    batch = torch.zeros(len(images), 3, *canvas)
    for slot, image in zip(batch, images):
        slot[:, : image.shape[1], : image.shape[2]] = image
    inside = inside_priors(model, sizes, canvas)
    with torch.inference_mode():
        padded = model(batch, PaddingMask(sizes, canvas))
        unmasked = model(batch)
        for index, image in enumerate(images):
            alone = model(image[None])
            for together, single, _ in zip(padded, alone, unmasked):
                torch.testing.assert_close(together[index][inside[index]], single[0], rtol=1e-4, atol=1e-4)
            if sizes[index] != canvas:
                assert not torch.allclose(unmasked[0][index][inside[index]], alone[0][0], atol=1e-3)


def test_padding_mask_rejects_a_foreign_resolution():
    mask = PaddingMask([(10, 10)], (64, 64))
    assert mask.stride_of(8, 8) == 8 and mask.stride_of(1, 1) == 64
    with pytest.raises(ValueError, match="no power-of-two reduction"):
        mask(torch.zeros(1, 1, 5, 7))


def test_deformable_ssh_trains():
    torch.manual_seed(0)
    model = RetinaFace("mobilenet0.25", dcn=True).train()
    deformable = [name for name, m in model.named_modules() if type(m).__name__ == "DeformConv2d"]
    assert len(deformable) == 15  # 5 per SSH module
    assert all(name.startswith("ssh") for name in deformable)
    loc, logits, landm = model(torch.randn(2, 3, 64, 64))
    (loc.square().mean() + logits.square().mean() + landm.square().mean()).backward()
    offset_grad = model.ssh1.conv5X5_1[0].conv_offset.weight.grad
    assert offset_grad is not None and offset_grad.abs().sum() > 0
    assert model.body.stage1[0][0].weight.grad.abs().sum() > 0


def test_a_plain_checkpoint_does_not_silently_load_into_a_dcn_model():
    plain = RetinaFace("mobilenet0.25").state_dict()
    with pytest.raises(ValueError, match=r"missing keys: .*conv_offset"):
        RetinaFace("mobilenet0.25", dcn=True).load_checkpoint(plain)


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
@pytest.mark.parametrize("fold", [True, False])
def test_inference_model_computes_what_the_model_computes(backbone, fold):
    from retinaface_ext.models import InferenceRetinaFace

    torch.manual_seed(0)
    model = randomise_batchnorm(RetinaFace(backbone)).eval()
    for head in list(model.ClassHead) + list(model.BboxHead) + list(model.LandmarkHead):
        torch.nn.init.normal_(head.conv1x1.bias)
    fast = InferenceRetinaFace(model, fold_batchnorm=fold)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # source untouched
    sizes, canvas = [(80, 64), (50, 90)], (80, 90)
    x = torch.randn(2, 3, *canvas) * 50
    with torch.inference_mode():
        for a, b in zip(model(x), fast(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        mask = PaddingMask(sizes, canvas)
        for a, b in zip(model(x, mask), fast(x, mask)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_fused_convolution_activation_equals_the_two_steps():
    from retinaface_ext.models import InferenceRetinaFace
    from retinaface_ext.models.inference import ConvActivation

    torch.manual_seed(0)
    model = randomise_batchnorm(RetinaFace("mobilenet0.25")).eval()
    fast = InferenceRetinaFace(model)
    fused = [m for m in fast.modules() if isinstance(m, ConvActivation)]
    assert len(fused) == 38  # every folded conv + activation of the backbone, FPN and SSH
    x = torch.randn(1, 3, 64, 80) * 50
    with torch.inference_mode():
        together = fast(x)
        for module in fused:
            module.fused = False
        for a, b in zip(together, fast(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_a_batch_of_zero_images_gives_empty_outputs(backbone):
    from retinaface_ext.models import InferenceRetinaFace

    model = RetinaFace(backbone).eval()
    with torch.no_grad():
        for network in (model, InferenceRetinaFace(model)):
            loc, logits, landm = network(torch.zeros(0, 3, 64, 96))
            assert loc.shape == (0, 2 * (8 * 12 + 4 * 6 + 2 * 3), 4)
            assert logits.shape[-1] == 2 and landm.shape[-1] == 10


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(3, 64, 64), r"images must have shape \[B, 3, H, W\]"),
        (torch.zeros(1, 1, 64, 64), r"images must have shape \[B, 3, H, W\]"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "images must be floating point"),
        (torch.zeros(1, 3, 0, 64), "images must not be empty"),
    ],
)
def test_bad_images_are_explained(images, message):
    with pytest.raises(ValueError, match=message):
        RetinaFace("mobilenet0.25")(images)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(out_channels=0), "out_channels must be a positive multiple of 4"),
        (dict(out_channels=30), "out_channels must be a positive multiple of 4"),
        (dict(in_channels=(64, 0, 256)), "in_channels must be three positive"),
        (dict(steps=(8, 16)), "min_sizes and steps must describe the 3 FPN levels"),
        (dict(min_sizes=((16,), (64,), (256,))), "anchors_per_location"),
        (dict(variances=(0.1, 0.0)), "variances must be two positive numbers"),
    ],
)
def test_a_config_that_cannot_work_is_refused(change, message):
    import dataclasses

    with pytest.raises(ValueError, match=message):
        dataclasses.replace(MOBILENET_025, **change)


def test_checkpoints_with_non_finite_weights_are_refused(tmp_path):
    state_dict = RetinaFace("mobilenet0.25").state_dict()
    state_dict["ClassHead.1.conv1x1.weight"][0, 0] = float("nan")
    state_dict["body.stage1.0.1.running_var"][3] = float("inf")
    path = tmp_path / "diverged.pth"
    torch.save(state_dict, path)
    with pytest.raises(ValueError, match=r"diverged.pth: 2 tensors hold NaN or inf: .*ClassHead.1.conv1x1.weight"):
        RetinaFace.from_checkpoint(path)
