"""Packages are programs: a .pt2 is read as data first (its entries, its metadata) and loaded
only when this installation built it or the caller trusts it; failed loads leave nothing;
the cache rebuilds an entry that changed; to_pt2 makes or refuses its folder before the
export. Fake packages (zips laid out as AOTInductor's) keep these tests free of compiling."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from cli_run import one_line_error, run_cli

from retinaface_ext.export import load_pt2, to_pt2
from retinaface_ext.models import RetinaFace

PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
  FILE* marker = fopen(getenv("RETINAFACE_TEST_MARKER"), "w");
  if (marker) fclose(marker);
}
"""


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A cache folder of its own: no package counts as built here."""
    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path / "cache"))


def fake_package(path, library=b"not a library", postprocess="0", backbone="mobilenet0.25", names=()):
    """A zip laid out as AOTInductor's packages are, with our metadata, ``library`` as its
    shared library and extra entries ``names`` (each holding ``b"x"``)."""
    import json
    import zipfile

    metadata = {
        "retinaface_ext.backbone": backbone,
        "retinaface_ext.postprocess": postprocess,
        "retinaface_ext.outputs": "loc,logits,landmarks",
        "retinaface_ext.torch": torch.__version__,
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/data/aotinductor/model/abc.wrapper_metadata.json", json.dumps(metadata))
        archive.writestr("model/data/aotinductor/model/abc.wrapper.so", library)
        for name in names:
            archive.writestr(name, b"x")
    return path


@pytest.mark.skipif(not shutil.which("cc"), reason="no C compiler")
def test_a_package_from_elsewhere_is_not_run_without_trust(tmp_path, empty_cache, monkeypatch, capsys):
    """Its shared library's constructor would run as the package loads."""
    from retinaface_ext import Detector
    from retinaface_ext.export import UntrustedPackage

    (tmp_path / "planted.c").write_text(PLANTED)
    library = tmp_path / "planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", library, tmp_path / "planted.c"], check=True)
    marker = tmp_path / "the-constructor-ran"
    monkeypatch.setenv("RETINAFACE_TEST_MARKER", str(marker))
    package = fake_package(tmp_path / "network.pt2", library.read_bytes())
    for load in (lambda: load_pt2(package), lambda: Detector(package, device="cpu")):
        with pytest.raises(UntrustedPackage, match="not built by this installation; a .pt2 package is a program"):
            load()
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"")  # refused as a package before any image is read
    code, _, err = run_cli(capsys, "detect", image, "--weights", package, "--json")
    one_line_error(code, err, "network.pt2: not built by this installation", "--trust-package")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model/.../../../escaped", "/tmp/escaped", "model/a\\..\\..\\escaped", "../x"])
def test_an_entry_outside_the_package_folder_is_refused_before_torch_sees_it(tmp_path, monkeypatch, name):
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: pytest.fail("torch's loader ran"))
    package = fake_package(tmp_path / "x.pt2", names=[name])
    with pytest.raises(ValueError, match="would be extracted outside the package's folder"):
        load_pt2(package, trust=True)


def test_a_link_entry_is_refused(tmp_path):
    import zipfile

    package = fake_package(tmp_path / "x.pt2")
    with zipfile.ZipFile(package, "a") as archive:
        link = zipfile.ZipInfo("model/data/link")
        link.external_attr = (0o120777 << 16) | 0  # a symbolic link
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(ValueError, match="'model/data/link' would be extracted outside"):
        load_pt2(package, trust=True)


def test_a_package_that_fails_to_load_leaves_no_folder_behind(tmp_path):
    import tempfile

    folder = tempfile.gettempdir()
    before = set(os.listdir(folder))
    with pytest.raises(ValueError, match="x.pt2: not a loadable AOTInductor package"):
        load_pt2(fake_package(tmp_path / "x.pt2"), trust=True)
    assert {n for n in set(os.listdir(folder)) - before if "aotinductor" in n or "retinaface-pt2" in n} == set()


def test_the_package_metadata_is_checked_before_it_loads(tmp_path, monkeypatch):
    from retinaface_ext import Detector

    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: pytest.fail("torch's loader ran"))
    network = fake_package(tmp_path / "network.pt2")
    with pytest.raises(ValueError, match="backbone='resnet50', but .*network.pt2 holds a mobilenet0.25 network"):
        Detector(network, backbone="resnet50", trust_package=True)
    detector = fake_package(tmp_path / "detector.pt2", postprocess="1")
    with pytest.raises(ValueError, match="holds the post-processing too"):
        Detector(detector, trust_package=True)
    for content, message in ((b"PK\x03\x04 cut", "not a zip archive"), (b"", "not a zip archive")):
        (tmp_path / "bad.pt2").write_bytes(content)
        with pytest.raises(ValueError, match=message):
            load_pt2(tmp_path / "bad.pt2", trust=True)


def test_a_cache_entry_that_changed_is_built_again(tmp_path, monkeypatch):
    """A cut-short or swapped entry no longer matches the digest taken when it was built."""
    from retinaface_ext.export import pt2
    from retinaface_ext.inference import engines

    monkeypatch.setenv("RETINAFACE_EXT_CACHE", str(tmp_path / "cache"))
    builds = []

    def build(model, path, **kwargs):
        builds.append(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fake_package(path)

    loaded = []
    monkeypatch.setattr(pt2, "to_pt2", build)
    monkeypatch.setattr("retinaface_ext.export.pt2_files.load_pt2", lambda path, *a, **k: loaded.append(path))
    model = RetinaFace("mobilenet0.25")
    path, _ = engines.cached_package(model, "cpu")
    assert engines.cached_package(model, "cpu")[0] == path and len(builds) == 1 and len(loaded) == 2
    with open(path, "r+b") as entry:
        entry.truncate(100)
    engines.cached_package(model, "cpu")
    assert len(builds) == 2


def test_the_folder_of_a_package_is_made_or_refused_before_the_export(tmp_path, monkeypatch, capsys):
    """`export --pt2 missing_dir/x.pt2` failed after about 25 s of export."""
    model = RetinaFace("mobilenet0.25")
    (tmp_path / "a-file").write_bytes(b"")
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: pytest.fail("exported first"))
    with pytest.raises(ValueError, match="a-file is a file, not a folder"):
        to_pt2(model, tmp_path / "a-file" / "sub" / "x.pt2", size=(64, 64))
    monkeypatch.undo()

    def compile_into(program, package_path=None, inductor_configs=None):
        with open(package_path, "wb") as written:  # the folder is there when the package is written
            written.write(b"a package")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_into)
    report = to_pt2(model, tmp_path / "new" / "sub" / "x.pt2", size=(64, 64), dynamic=False, check=False)
    assert os.path.getsize(report.path) == len(b"a package")

    def compile_fails(program, package_path=None, inductor_configs=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_fails)
    with pytest.raises(RuntimeError, match="out of memory"):
        to_pt2(model, tmp_path / "other" / "sub" / "x.pt2", size=(64, 64), dynamic=False)
    assert not (tmp_path / "other").exists()  # the folders it made are gone again
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.write_bytes(b"")  # the size is refused before the checkpoint is read
    code, _, err = run_cli(capsys, "export", "--weights", checkpoint, "--pt2", tmp_path / "y.pt2", "--size", "16", "16")
    one_line_error(code, err, "to_pt2: size must be at least 32 x 32")


def test_the_commands_do_not_pass_on_torchs_cuda_runtime_note(tmp_path):
    """Every export printed torch's "No CUDA runtime is found" on a machine without a GPU."""
    script = (
        "from retinaface_ext import cli\n"
        "cli.main(['export', '--weights', 'checkpoint.pth', '--pt2', 'x.pt2', '--size', '16', '16'])\n"
        "import torch.utils.cpp_extension  # what inductor imports when it compiles\n"
    )
    (tmp_path / "checkpoint.pth").write_bytes(b"")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "No CUDA runtime" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "to_pt2: size must be at least 32 x 32" in result.stderr
