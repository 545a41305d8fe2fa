"""The one table of model formats (deploy/formats.py): every exported format has exactly one
backend that runs it and one exporter that writes it, each module what the table names; every
suffix belongs to one format; and the decision by suffix is made there only."""
import ast
import os

import pytest

from deploy import formats
from utils.errors import ToolError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("fmt", [f for f in formats.MODEL_FORMATS if f.exported],
                         ids=lambda f: f.name)
def test_each_exported_format_has_one_backend_and_one_exporter(fmt):
    for package in fmt.packages:
        pytest.importorskip(package)
    backend = formats.backend_module(fmt)
    exporter = formats.exporter_module(fmt)
    assert callable(backend.inspect) and isinstance(backend.Session, type)
    assert callable(exporter.write)
    # No other module of deploy/backends or deploy/exporters serves this format.
    for folder, module in (("backends", backend), ("exporters", exporter)):
        names = {name[:-3] for name in os.listdir(os.path.join(REPO_ROOT, "deploy", folder))
                 if name.endswith(".py") and name not in ("__init__.py", "base.py")}
        serving = [n for n in names if n in (fmt.backend, fmt.exporter)]
        assert serving == [module.__name__.rsplit(".", 1)[1]]


def test_every_backend_and_exporter_module_belongs_to_one_format():
    for folder, attribute in (("backends", "backend"), ("exporters", "exporter")):
        names = sorted(name[:-3] for name in os.listdir(os.path.join(REPO_ROOT, "deploy", folder))
                       if name.endswith(".py") and name not in ("__init__.py", "base.py"))
        owners = sorted(getattr(f, attribute) for f in formats.MODEL_FORMATS
                        if getattr(f, attribute))
        assert names == owners


def test_suffixes_resolve_to_one_format_case_blind():
    suffixes = [s for f in formats.MODEL_FORMATS for s in f.suffixes]
    assert len(suffixes) == len(set(suffixes))
    assert formats.resolve_format("a/b/MODEL.ONNX") is formats.ONNX
    assert formats.resolve_format("m.xml") is formats.OPENVINO
    assert formats.resolve_format("w.pt") is formats.resolve_format("w.pth") is formats.PYTORCH
    assert formats.is_exported("m.onnx") and not formats.is_exported("w.pth")
    with pytest.raises(ToolError, match=r"'m.tflite' is neither PyTorch weights"):
        formats.resolve_format("m.tflite")
    assert formats.OPENVINO.files("d/m.xml") == ("d/m.xml", "d/m.bin")


def test_no_module_outside_deploy_decides_by_a_model_files_suffix():
    """The suffixes of the table appear as string constants in deploy/ only."""
    model_suffixes = {s for f in formats.MODEL_FORMATS for s in f.suffixes if f.exported}
    found = []
    for package in ("processor", "model", "datasets", "utils", "config", "loss", "solver",
                    "tools"):
        for folder, _, names in os.walk(os.path.join(REPO_ROOT, package)):
            for name in (n for n in names if n.endswith(".py")):
                path = os.path.join(folder, name)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                    if isinstance(node, ast.Constant) and node.value in model_suffixes:
                        found.append(f"{os.path.relpath(path, REPO_ROOT)}:{node.lineno}")
    assert found == []


def test_importing_the_table_loads_no_runtime():
    import subprocess
    import sys
    code = ("import sys; import deploy.formats; "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'openvino', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"
