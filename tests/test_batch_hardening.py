# ruff: noqa: F811 - pytest fixtures imported from test_batch are redefined as arguments
"""`icg batch` as careful as `icg generate`: a folder it did not create is refused before any
write, resume verifies the covers on disk and redraws damaged ones, leftovers are cleaned, and a
full disk ends in one line, with a resume that writes the same bytes as an uninterrupted run."""

from __future__ import annotations

import errno
import sys

import pandas as pd
import pytest
from hostile_fixtures import tree_hash
from test_batch import config, digests, setup  # noqa: F401 - the module's tiny world and run

from icg.batch import run_batch
from icg.batch.manifest import finished_partitions, read_manifest
from icg.io import DiskFullError
from icg.safety import OutputExistsError, UnsafePathError


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """One uninterrupted local batch run."""
    out = tmp_path_factory.mktemp("ref") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "ray", None)
        result = run_batch(config(setup, out))
    return out, result


def test_a_folder_batch_did_not_create_is_refused_before_any_write(setup, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "summary.json").write_text('{"mine": true}\n')
    (out / "assignments.parquet").write_bytes(b"user data")
    (out / "notes.txt").write_text("keep me\n")
    before = tree_hash(tmp_path)
    with pytest.raises(OutputExistsError, match="not written by icg batch .*--overwrite"):
        run_batch(config(setup, out))
    assert tree_hash(tmp_path) == before  # no plan/, no rejects/, nothing replaced
    result = run_batch(config(setup, out), overwrite=True)
    assert (out / "notes.txt").read_text() == "keep me\n"  # only batch's entries replaced
    assert len(pd.read_parquet(out / "assignments.parquet")) == len(result.assignments)


def test_a_symlink_where_batch_writes_is_refused_before_any_write(setup, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "covers").symlink_to(elsewhere, target_is_directory=True)
    before = tree_hash(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(UnsafePathError, match="covers is a symlink"):
            run_batch(config(setup, out), overwrite=overwrite)
    assert tree_hash(tmp_path) == before
    assert sorted(p.name for p in out.iterdir()) == ["covers"]  # no plan/, no rejects/


def test_resume_redraws_truncated_and_empty_covers_and_cleans_leftovers(
    setup,
    reference,
    tmp_path,
):
    ref, _ = reference
    out = tmp_path / "r"
    run_batch(config(setup, out))
    kept = read_manifest(out)["path"].tolist()
    data = (out / kept[0]).read_bytes()
    (out / kept[0]).write_bytes(data[: len(data) // 2])  # truncated by a crash
    (out / kept[-1]).write_bytes(b"")  # empty
    leftovers = [out / "covers" / ".tmp-x.png-abc", out / "manifest" / ".tmp-part-1"]
    leftovers.append(out / (kept[1].rsplit("/", 1)[0]) / ".tmp-c.png-zz")
    for path in leftovers:
        path.write_bytes(b"torn")
    resumed = run_batch(config(setup, out))
    assert resumed.images > 0 and resumed.skipped == resumed.partitions - 2
    assert digests(out) == digests(ref)
    assert not [p for p in leftovers if p.exists()]
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "assignments.parquet"), pd.read_parquet(ref / "assignments.parquet")
    )


def test_full_disk_is_one_error_and_resume_writes_the_same_bytes(setup, reference, tmp_path):
    """ENOSPC from the PNG writer in the middle of the second partition (a patched writer: no
    mounts): one DiskFullError, no cover of an unfinished partition left, and the resumed folder
    equals the uninterrupted one byte for byte (covers, manifest, assignments)."""
    import icg.batch.worker as worker

    ref, _ = reference
    out = tmp_path / "full"
    real, writes = worker.save_generated_png, []

    def fills_up(image, path, **text):
        writes.append(path)
        if len(writes) == 7:  # partitions hold 2 units x 2 candidates: the 3rd of partition 1
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(image, path, **text)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(worker, "save_generated_png", fills_up)
        with pytest.raises(DiskFullError, match="no space left on the device writing .* during "
                           "icg batch; removed the 2 file\\(s\\)") as info:  # fmt: skip
            run_batch(config(setup, out))
    assert "\n" not in str(info.value)
    done = finished_partitions(out)
    assert done == {0}
    on_disk = set(digests(out))
    assert on_disk == set(read_manifest(out).pipe(lambda m: m["path"]).tolist()) | {
        p
        for p in digests(ref)
        if p.rsplit("_c", 1)[0] in {r.rsplit("_c", 1)[0] for r in read_manifest(out)["path"]}
    }  # only the finished partition's covers (every candidate)
    run_batch(config(setup, out))
    assert digests(out) == digests(ref)
    for name in ("assignments.parquet",):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(ref / name))
    cols = ["unit", "path", "candidate", "seed", "score"]
    pd.testing.assert_frame_equal(read_manifest(out)[cols], read_manifest(ref)[cols])


def test_generate_on_a_full_disk_prints_one_line_and_leaves_no_manifest_less_cover(tmp_path):
    """ENOSPC in the middle of `icg generate` (a patched PNG writer): exit 1, one ``error:``
    line, no traceback, and none of the covers this call wrote stays without a manifest."""
    from hostile_fixtures import StubPipe, Workspace
    from typer.testing import CliRunner

    import icg.generation
    import icg.models.paths
    import icg.pipeline
    from icg.cli import build_app

    ws = Workspace(tmp_path)
    real, writes = icg.generation.save_generated_png, []

    def fills_up(image, path, **text):
        writes.append(path)
        if len(writes) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(image, path, **text)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(icg.generation, "save_generated_png", fills_up)
        mp.setattr(icg.pipeline.ICGPipeline, "from_pretrained", lambda *a, **k: StubPipe())
        mp.setattr(icg.models.paths, "resolve_adapter_dir", lambda p: p)
        args = ["generate", "--adapter", str(tmp_path / "adapter"), "--data", str(ws.data)]
        args += ["--out", str(ws.out), "--users", "2", "--items", "2", "--batch-size", "1"]
        result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("error:")] == [
        lines[-1]
    ] and "no space left on the device" in lines[-1]
    assert "removed the 2 file(s)" in lines[-1] and "Traceback" not in result.output
    assert not list(ws.out.rglob("*.png")) and not (ws.out / "manifest.parquet").exists()
    assert ws.unchanged()
