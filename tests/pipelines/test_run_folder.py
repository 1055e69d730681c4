"""Run-folder integrity and staging, on small synthetic run folders (no model): every damaged or hand-edited
folder is refused with a RunFolderError naming the problem; staged writes swap in whole or not at all."""

import json
import os
import shutil

import pytest
import torch

from octopus_diffusers.pipelines.run_folder import (MANIFEST_NAME, OutputFolderError, OutputNotWritableError,
                                                    RunFolder, RunFolderError, check_output_folder,
                                                    manifest_digest, save_frames, staged_folder, write_manifest)

VARIANTS = (("baseline", None, None), ("octopus-a332", "octopus", 8 / 3), ("turboquant-3b", "turboquant", 3.0))


def make_run(root, variants=VARIANTS, seed=0):
    """A sealed video run folder with random 3-frame outputs; returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (name, codec, bits) in enumerate(variants):
        rel = f"outputs/{name}/prompt0.video.safetensors"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        save_frames(root / rel, torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(seed + i)), "float32")
        entries.append({"name": name, "codec": codec, "bits": bits, "options": {},
                        "target_rate": 4.0 if codec else None,
                        "bits_per_scalar": 4.0 if codec else None, "kv": None, "seconds": 0.1,
                        "outputs": [{"video": rel}]})
    write_manifest(root, {"model": {"name": "test"}, "media": ["video"], "fps": 8, "sample_rate": None,
                          "prompts": ["p"], "seed": 0, "steps": 2, "variants": entries})
    return root


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def test_a_sealed_folder_opens_and_records_sizes_and_hashes(run):
    folder = RunFolder(run)
    rel = "outputs/octopus-a332/prompt0.video.safetensors"
    assert folder.manifest["files"][rel]["bytes"] == (run / rel).stat().st_size
    assert len(folder.manifest["files"][rel]["sha256"]) == 64
    assert folder.load("octopus-a332", 0, "video").shape == (3, 3, 8, 8)


def _edit_manifest(run, change, reseal):
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    change(manifest)
    if reseal:
        manifest["digest"] = manifest_digest(manifest)
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


OUT = "outputs/octopus-a332/prompt0.video.safetensors"
DAMAGE = {
    "missing output": (lambda r: (r / OUT).unlink(), "is missing"),
    "truncated output": (lambda r: _truncate(r / OUT), "does not match"),
    "changed output, same size": (lambda r: _flip_byte(r / OUT), "does not match"),
    "output replaced by another variant's": (
        lambda r: shutil.copy(r / "outputs/baseline/prompt0.video.safetensors", r / OUT), "does not match"),
    "extra output file": (lambda r: shutil.copy(r / OUT, r / "outputs/octopus-a332/prompt1.video.safetensors"),
                          "not in manifest.json"),
    "stale variant folder": (lambda r: shutil.copytree(r / "outputs/octopus-a332", r / "outputs/uniform-2b"),
                             "not in manifest.json"),
    "manifest missing": (lambda r: (r / MANIFEST_NAME).unlink(), "no manifest.json"),
    "manifest not JSON": (lambda r: (r / MANIFEST_NAME).write_text("{not json"), "not readable JSON"),
    "manifest truncated": (lambda r: (r / MANIFEST_NAME).write_text((r / MANIFEST_NAME).read_text()[:100]),
                           "not readable JSON"),
    "manifest a list": (lambda r: (r / MANIFEST_NAME).write_text("[]"), "format None"),
    "older format": (lambda r: _edit_manifest(r, lambda m: m.update(format="octopus-diffusers-run/1"), True),
                     "expected 'octopus-diffusers-run/2'"),
    "hand-edited bits": (lambda r: _edit_manifest(r, lambda m: m["variants"][1].update(bits=2), False),
                         "changed after the run"),
    "hand-edited digest only": (lambda r: _edit_manifest(r, lambda m: m.update(digest="0" * 64), False),
                                "changed after the run"),
    "variant removed (resealed)": (lambda r: _edit_manifest(r, lambda m: m["variants"].pop(2), True),
                                   "which no variant lists"),
    "variant and its file record removed (resealed)": (lambda r: _edit_manifest(r, lambda m: (
        m["variants"].pop(2), m["files"].pop("outputs/turboquant-3b/prompt0.video.safetensors")), True),
        "not in manifest.json"),
    "output pointed at the baseline's file (resealed)": (
        lambda r: _edit_manifest(r, lambda m: m["variants"][1]["outputs"][0].update(
            video="outputs/baseline/prompt0.video.safetensors"), True), "which is not an outputs/octopus-a332/"),
    "path escaping the folder (resealed)": (
        lambda r: _edit_manifest(r, lambda m: m["variants"][1]["outputs"][0].update(video="../x"), True),
        "which is not an outputs/"),
    "baseline removed (resealed)": (lambda r: _edit_manifest(r, lambda m: m["variants"][0].update(
        name="other", codec="none"), True), "not an outputs/other/"),
    "duplicate variant (resealed)": (lambda r: _edit_manifest(r, lambda m: m["variants"].append(m["variants"][1]),
                                                               True), "listed twice"),
    "non-numeric bits (resealed)": (lambda r: _edit_manifest(r, lambda m: m["variants"][1].update(bits="3"), True),
                                    "non-numeric bits"),
    "fewer outputs than prompts (resealed)": (lambda r: _edit_manifest(r, lambda m: m.update(prompts=["a", "b"]),
                                                                       True), "1 outputs for 2 prompt"),
    "unknown media (resealed)": (lambda r: _edit_manifest(r, lambda m: m.update(media=["smell"]), True),
                                 "media must be"),
    "bad fps (resealed)": (lambda r: _edit_manifest(r, lambda m: m.update(fps=-1), True), "positive fps"),
    "files record damaged (resealed)": (lambda r: _edit_manifest(r, lambda m: m["files"].update({OUT: "x"}), True),
                                        "does not match"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_or_edited_folders_are_refused(run, case):
    damage, message = DAMAGE[case]
    damage(run)
    with pytest.raises(RunFolderError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunFolder(run)


def test_unreadable_output_with_matching_record_is_refused_at_load(run):
    """An output damaged and then resealed passes the hash check but still fails to load, clearly."""
    (run / OUT).write_bytes(b"garbage")
    _edit_manifest(run, lambda m: m["files"].update({OUT: {"bytes": 7, "sha256": __import__("hashlib").sha256(
        b"garbage").hexdigest()}}), True)
    with pytest.raises(RunFolderError, match="cannot read this video output"):
        RunFolder(run).load("octopus-a332", 0, "video")


def test_staged_folder_swaps_in_only_when_complete(tmp_path):
    target = make_run(tmp_path / "run")
    before = RunFolder(target).digest
    with pytest.raises(KeyboardInterrupt):
        with staged_folder(target, overwrite=True) as staging:
            make_run(staging, seed=5)
            raise KeyboardInterrupt
    assert RunFolder(target).digest == before and sorted(os.listdir(tmp_path)) == ["run"]
    with staged_folder(target, overwrite=True) as staging:
        assert staging.parent == target.parent and staging != target
        make_run(staging, VARIANTS[:2], seed=5)
    folder = RunFolder(target)
    assert folder.digest != before and [v["name"] for v in folder.variants] == ["baseline", "octopus-a332"]
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_output_folder_checks(tmp_path):
    existing = make_run(tmp_path / "run")
    with pytest.raises(OutputFolderError, match="pass --overwrite"):
        check_output_folder(existing)
    check_output_folder(existing, overwrite=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "thesis.tex").write_text("x")
    with pytest.raises(OutputFolderError, match="did not write"):
        check_output_folder(tmp_path / "data", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        check_output_folder(tmp_path / "file")
    with pytest.raises(OutputFolderError, match="inside .* which is a file"):
        check_output_folder(tmp_path / "file" / "sub" / "run")
    check_output_folder(tmp_path / "new" / "deeper")  # absent parents are fine
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty")


def test_unwritable_output_folder_as_reported_by_the_os(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(OutputNotWritableError, match="no permission to write in"):
        check_output_folder(tmp_path / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputNotWritableError, match="no permission"):
            check_output_folder(locked / "run")
    finally:
        locked.chmod(0o700)
