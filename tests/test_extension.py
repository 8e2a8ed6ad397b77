"""Loading the compiled kernels: a missing or mismatched _C is explained, never a crash,
and the references keep working without it."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import retinaface_ext
from retinaface_ext import _extension


def test_kernels_are_loaded_and_registered():
    assert retinaface_ext.kernels_available()
    assert "cpu" in retinaface_ext.compiled_backends()
    assert hasattr(torch.ops.retinaface_ext, "nms")
    assert hasattr(torch.ops.retinaface_ext, "batched_nms")


def test_build_info_names_the_running_torch():
    from retinaface_ext import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__
    if torch.version.cuda is None:
        assert _build_info.BACKENDS == ("cpu",)


@pytest.mark.skipif(
    os.environ.get("RETINAFACE_EXT_CPU_ONLY") == "1" or torch.version.cuda is None or shutil.which("nvcc") is None,
    reason="CUDA is built only by a CUDA torch with nvcc present",
)
def test_cuda_backend_was_compiled_where_it_can_be():
    assert "cuda" in retinaface_ext.compiled_backends()


def test_cuda_tensor_on_cpu_only_build_is_explained(monkeypatch):
    monkeypatch.setattr(_extension._build_info, "BACKENDS", ("cpu",))
    with pytest.raises(RuntimeError, match="built without CUDA kernels"):
        _extension.require(SimpleNamespace(is_cuda=True))


def run_with_package_copy(tmp_path, build_info, copy_compiled):
    """Imports a copy of the installed package whose _C is absent or claims another torch."""
    installed = Path(retinaface_ext.__file__).parent
    copy = tmp_path / "retinaface_ext"
    shutil.copytree(installed, copy, ignore=shutil.ignore_patterns("__pycache__", "_C.*", "_build_info.py"))
    if copy_compiled:
        for compiled in installed.glob("_C.*"):
            shutil.copy(compiled, copy / compiled.name)
    if build_info is not None:
        (copy / "_build_info.py").write_text(build_info)
    script = textwrap.dedent(
        """
        import torch, retinaface_ext
        from retinaface_ext.ops import nms, reference
        assert retinaface_ext.__file__.startswith(%r), retinaface_ext.__file__
        assert not retinaface_ext.kernels_available()
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
        scores = torch.tensor([0.9, 0.8])
        assert reference.nms(boxes, scores, 0.5).tolist() == [0]
        try:
            nms(boxes, scores, 0.5)
        except ImportError as error:
            print(error)
        else:
            raise SystemExit("nms did not raise ImportError")
        """
        % str(tmp_path)
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_missing_extension_is_explained(tmp_path):
    message = run_with_package_copy(tmp_path, build_info=None, copy_compiled=False)
    assert "retinaface_ext._C is missing" in message
    assert _extension.REBUILD_COMMAND in message


def test_extension_built_for_another_torch_is_not_loaded(tmp_path):
    build_info = "TORCH_VERSION = '1.0.0'\nTORCH_CUDA_VERSION = None\nBACKENDS = ('cpu',)\n"
    message = run_with_package_copy(tmp_path, build_info=build_info, copy_compiled=True)
    assert f"built for torch 1.0.0, but torch {torch.__version__} is running" in message
    assert _extension.REBUILD_COMMAND in message
