"""Memory bounded by what is decoded: hostile files are refused from their headers, in a
subprocess whose address space is capped (``RLIMIT_AS``), so a regression that reads or decodes
them fails with MemoryError instead of passing on a large machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hostile_files import build, huge_tensor_safetensors, refuse_all

from icg.artifacts import ArtifactError, read_safetensors, read_safetensors_header

resource = pytest.importorskip("resource")

HEADROOM_BYTES = 768 * 2**20
"""Address space allowed above what the child uses once its imports are done: far less than
any file of the set would take if it were read or decoded (2 GiB and more each)."""

CHILD = """
import json, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import torch, icg.artifacts, icg.data.images  # imports first: the cap is on top of them
from hostile_files import build, refuse_all
import re
vm = int(re.search(r"VmSize:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
limit = vm + int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    bytearray(3 * 2**30)  # the cap is real: a 3 GiB allocation fails
    print(json.dumps({"cap": "not enforced"}))
    sys.exit(3)
except MemoryError:
    pass
print(json.dumps(refuse_all(build(Path(sys.argv[1])))))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_hostile_set_is_refused_under_an_address_space_cap(tmp_path):
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path])}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "set"), tests, str(HEADROOM_BYTES)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    refusals = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(refusals) == {
        "thin.png", "lying_chunk.png", "fat_chunk.png", "oversized.png", "huge_tensor.safetensors"
    }  # fmt: skip
    assert "aspect ratio" in refusals["thin.png"]
    assert "claims 2147483648 bytes, the file has" in refusals["lying_chunk.png"]
    assert "'tEXt' of 209715200 bytes, over the limit of 8388608" in refusals["fat_chunk.png"]
    assert "over the limit of 268435456" in refusals["oversized.png"]
    assert (
        "tensor 'w' has shape (536870912,), the config builds (4,)"
        in (refusals["huge_tensor.safetensors"])
    )


def test_safetensors_shapes_are_checked_before_any_tensor_is_read(tmp_path, monkeypatch):
    from safetensors import safe_open

    path = huge_tensor_safetensors(tmp_path / "w.safetensors")
    opened = []
    monkeypatch.setattr(
        "safetensors.safe_open", lambda *a, **k: opened.append(a) or safe_open(*a, **k)
    )
    with pytest.raises(ArtifactError, match="has shape \\(536870912,\\)"):
        read_safetensors(path, {"w": (4,)})
    assert opened == []
    assert read_safetensors_header(path) == {"w": ("F32", (2**29,))}


def test_safetensors_header_that_overruns_the_file_is_refused(tmp_path):
    path = tmp_path / "short.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 4096]}})
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\x00" * 16)
    with pytest.raises(ArtifactError, match="claims bytes 0..4096; the file holds 16 bytes"):
        read_safetensors(path)
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ArtifactError, match="header of 1099511627776 bytes"):
        read_safetensors_header(path)
    header = json.dumps({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\x00" * 16)
    with pytest.raises(ArtifactError, match="'w' \\(F32 \\(3,\\)\\) claims bytes 0..16"):
        read_safetensors(path)


def test_a_sound_file_still_loads(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "ok.safetensors"
    save_file({"w": torch.arange(4.0), "b": torch.zeros(2, 3, dtype=torch.bfloat16)}, str(path))
    tensors, _ = read_safetensors(path, {"w": (4,), "b": (2, 3)})
    assert torch.equal(tensors["w"], torch.arange(4.0))
    assert read_safetensors_header(path) == {"w": ("F32", (4,)), "b": ("BF16", (2, 3))}


def test_hostile_set_refusals_in_process(tmp_path):
    refusals = refuse_all(build(tmp_path))
    assert len(refusals) == 5
