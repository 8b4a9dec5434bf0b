"""The pinned llama.cpp converter: only the right sdist is accepted, a missing install is a clear error."""

from __future__ import annotations

import io
import tarfile

import pytest

from trainer import converter
from trainer.errors import ExportError


def _fake_sdist(path):
    with tarfile.open(path, "w:gz") as tar:
        data = b"print('not llama.cpp')\n"
        info = tarfile.TarInfo(
            f"llama_cpp_python-{converter.LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/convert_hf_to_gguf.py"
        )
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def test_an_sdist_with_another_digest_is_refused(tmp_path):
    with pytest.raises(ExportError, match="refusing to use a different converter"):
        converter.extract(_fake_sdist(tmp_path / "fake.tar.gz"), tmp_path / "target")
    assert not converter.installed(tmp_path / "target")


def test_export_without_the_converter_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINER_LLAMA_CPP_DIR", str(tmp_path / "empty"))
    assert converter.converter_dir() == tmp_path / "empty"
    with pytest.raises(ExportError, match=r"run `python -m trainer.converter`"):
        converter.script("convert_hf_to_gguf.py")
