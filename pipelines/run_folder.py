"""The on-disk layout of one comparison run, shared by the runner (writes) and eval/render (read).

::

    <run>/manifest.json                         what was run: model, prompts, seed, variants, versions
    <run>/outputs/<variant>/prompt<i>.video.safetensors   frames (F, C, H, W) in [0, 1], key "frames"
    <run>/outputs/<variant>/prompt<i>.wav                 audio (T, C) float32 WAV

``variant`` is ``baseline`` (no quantization) or ``<codec>-<setting>`` (``octopus-3b``,
``octopus-a332``, ``none-fp32``). Paths inside the manifest are relative to the run folder so a run
can be moved or archived whole.

Integrity: the manifest lists the size and SHA-256 of every output file (``files``) and carries a
digest of its own content (``digest``). :class:`RunFolder` refuses a folder whose outputs are
missing, extra, truncated or changed, or whose manifest was edited by hand, with a
:class:`RunFolderError` naming the file. Writers never update a run folder in place:
:func:`staged_folder` builds the new folder beside the target and swaps it in only when complete,
so an interrupted run leaves the previous folder (or nothing) behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

MANIFEST_NAME = "manifest.json"
#: Version 2 added the per-file sizes/SHA-256 and the manifest digest.
MANIFEST_FORMAT = "octopus-diffusers-run/2"
BASELINE = "baseline"
#: Output files live under this sub-folder, one folder per variant.
OUTPUTS = "outputs"
MEDIA_KINDS = ("video", "audio")


class RunFolderError(ValueError):
    """A run folder (or file inside it) is missing, damaged, or does not match its manifest."""


class OutputFolderError(ValueError):
    """An output folder cannot be written as asked (it is a file, lies inside a file, holds other data)."""


class OutputNotWritableError(OutputFolderError):
    """An output folder's parent exists but this process may not write there."""
#: On-disk dtypes for frames; float16 keeps 11 significant bits (rounding error <= 2.5e-4 in [0, 1], a
#: noise floor near 75 dB PSNR), float32 is exact.
FRAME_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def true_rate(variant: dict[str, Any]) -> float | None:
    """A manifest (or results) variant's true bits per scalar: measured from the bytes its K/V took,
    else the codec's own figure, else its nominal bits; ``None`` for the baseline."""
    for key in ("bits_per_scalar", "predicted_bits_per_scalar", "bits"):
        if variant.get(key) is not None:
            return float(variant[key])
    return None


def to_jsonable(value: Any) -> Any:
    """Recursively make ``value`` strict JSON: non-finite floats become the strings ``"inf"``, ``"-inf"``,
    ``"nan"`` (identical outputs have infinite PSNR), tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def from_jsonable(value: Any) -> Any:
    """Inverse of :func:`to_jsonable` for numbers: ``"inf"``/``"-inf"``/``"nan"`` back to floats."""
    if isinstance(value, str) and value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    return from_jsonable(json.loads(Path(path).read_text()))


def file_record(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex digest}`` of one file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


def manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest's canonical JSON without its ``digest`` field: any edit changes it."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    text = json.dumps(to_jsonable(body), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the size and SHA-256 of every output the manifest names, seal it with its digest and
    write it to ``root/manifest.json``; returns the written manifest."""
    root = Path(root)
    files = {rel: file_record(root / rel) for v in manifest["variants"] for entry in v["outputs"]
             for rel in entry.values()}
    sealed = {**manifest, "format": MANIFEST_FORMAT, "files": files}
    sealed["digest"] = manifest_digest(sealed)
    write_json(root / MANIFEST_NAME, sealed)
    return sealed


def save_frames(path: Path, frames: torch.Tensor, dtype: str = "float16") -> None:
    """Save video frames ``(F, C, H, W)`` in [0, 1] to safetensors in ``dtype``."""
    from safetensors.torch import save_file

    if dtype not in FRAME_DTYPES:
        raise ValueError(f"frame dtype must be one of {', '.join(FRAME_DTYPES)}, got {dtype!r}")
    save_file({"frames": frames.detach().to("cpu", FRAME_DTYPES[dtype]).contiguous()}, str(path))


def load_frames(path: Path) -> torch.Tensor:
    """Frames written by :func:`save_frames`, as float32 ``(F, C, H, W)``."""
    from safetensors.torch import load_file

    return load_file(str(path))["frames"].float()


def save_wav(path: Path, audio: torch.Tensor, sample_rate: int) -> None:
    """Write ``(C, T)`` float audio as a 32-bit float WAV (lossless for the metrics)."""
    import soundfile as sf

    sf.write(str(path), audio.detach().cpu().float().T.numpy(), sample_rate, subtype="FLOAT")


def load_wav(path: Path) -> tuple[torch.Tensor, int]:
    """``(C, T)`` float32 audio and its sample rate."""
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(data.T.copy()), int(rate)


def _fail(root: Path, problem: str) -> RunFolderError:
    return RunFolderError(f"{root}: {problem}")


def _check_structure(root: Path, m: Any) -> None:
    """The manifest's shape: every field eval/render read, with the types they expect."""
    if not isinstance(m, dict):
        raise _fail(root, f"{MANIFEST_NAME} is not a JSON object")
    for key, kind in (("variants", list), ("media", list), ("prompts", list), ("files", dict), ("digest", str)):
        if not isinstance(m.get(key), kind):
            raise _fail(root, f"{MANIFEST_NAME} has no valid {key!r} ({kind.__name__} expected)")
    if not m["media"] or any(x not in MEDIA_KINDS for x in m["media"]):
        raise _fail(root, f"{MANIFEST_NAME}: media must be some of {MEDIA_KINDS}, got {m['media']!r}")
    if not m["prompts"]:
        raise _fail(root, f"{MANIFEST_NAME} lists no prompt")
    if "audio" in m["media"] and (isinstance(m.get("sample_rate"), bool) or not isinstance(m.get("sample_rate"), int)
                                  or m["sample_rate"] <= 0):
        raise _fail(root, f"{MANIFEST_NAME}: audio needs a positive integer sample_rate, got {m.get('sample_rate')!r}")
    if "video" in m["media"] and (not isinstance(m.get("fps"), (int, float)) or isinstance(m.get("fps"), bool)
                                  or not m["fps"] > 0):
        raise _fail(root, f"{MANIFEST_NAME}: video needs a positive fps, got {m.get('fps')!r}")
    names: list[str] = []
    for v in m["variants"]:
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not isinstance(v.get("outputs"), list):
            raise _fail(root, f"{MANIFEST_NAME}: every variant needs a name and a list of outputs, got {v!r:.120}")
        name = v["name"]
        if name in names:
            raise _fail(root, f"{MANIFEST_NAME}: variant {name!r} is listed twice")
        names.append(name)
        if (v.get("codec") is None) != (name == BASELINE):
            raise _fail(root, f"{MANIFEST_NAME}: variant {name!r} has codec {v.get('codec')!r}")
        for key in ("bits", "bits_per_scalar"):
            value = v.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise _fail(root, f"{MANIFEST_NAME}: variant {name!r} has a non-numeric {key} {value!r}")
        if len(v["outputs"]) != len(m["prompts"]):
            raise _fail(root, f"{MANIFEST_NAME}: variant {name!r} has {len(v['outputs'])} outputs for "
                              f"{len(m['prompts'])} prompt(s)")
        for entry in v["outputs"]:
            if not isinstance(entry, dict) or sorted(entry) != sorted(m["media"]):
                raise _fail(root, f"{MANIFEST_NAME}: variant {name!r} output {entry!r:.120} does not name "
                                  f"one file per media {m['media']}")
            for rel in entry.values():
                parts = Path(rel).parts if isinstance(rel, str) else ()
                if len(parts) != 3 or parts[0] != OUTPUTS or parts[1] != name or rel not in m["files"]:
                    raise _fail(root, f"{MANIFEST_NAME}: variant {name!r} names output {rel!r}, which is not "
                                      f"an {OUTPUTS}/{name}/ file recorded in 'files'")
    if BASELINE not in names:
        raise _fail(root, f"{MANIFEST_NAME} has no {BASELINE!r} variant")
    named = {rel for v in m["variants"] for entry in v["outputs"] for rel in entry.values()}
    unnamed = sorted(set(m["files"]) - named)
    if unnamed:
        raise _fail(root, f"{MANIFEST_NAME} records {unnamed[0]}, which no variant lists as an output")


class RunFolder:
    """Read access to a run folder written by :mod:`octopus_diffusers.pipelines.runner`.

    Opening checks the manifest (format, structure, digest) and every output file (present, no extras,
    size and SHA-256 as recorded); any mismatch raises :class:`RunFolderError`.
    """

    def __init__(self, root: str | Path, verify: bool = True) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST_NAME
        if not self.root.is_dir():
            raise RunFolderError(f"{self.root}: no such folder")
        if not manifest.is_file():
            raise RunFolderError(f"{self.root}: no {MANIFEST_NAME}; is this a folder written by "
                                 "`octopus-diffusers run` or `demo`?")
        try:
            self.manifest: dict[str, Any] = read_json(manifest)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunFolderError(f"{manifest}: not readable JSON ({err})") from None
        found = self.manifest.get("format") if isinstance(self.manifest, dict) else None
        if found != MANIFEST_FORMAT:
            raise RunFolderError(f"{manifest}: format {found!r}, expected {MANIFEST_FORMAT!r} (a folder from "
                                 "another version, or not a run folder: generate it again)")
        _check_structure(self.root, self.manifest)
        if manifest_digest(self.manifest) != self.manifest["digest"]:
            raise RunFolderError(f"{manifest}: changed after the run was written (its digest does not match); "
                                 "generate the run again instead of editing the manifest")
        if verify:
            self.verify()

    def verify(self) -> None:
        """Every recorded output is present with its recorded size and SHA-256; nothing else is under
        ``outputs/``."""
        files: dict[str, Any] = self.manifest["files"]
        outputs = self.root / OUTPUTS
        present = {p.relative_to(self.root).as_posix() for p in outputs.rglob("*")
                   if not p.is_dir()} if outputs.is_dir() else set()
        missing = sorted(set(files) - present)
        if missing:
            raise _fail(self.root, f"output {missing[0]} listed in {MANIFEST_NAME} is missing"
                                   + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        extra = sorted(present - set(files))
        if extra:
            raise _fail(self.root, f"{extra[0]} is not in {MANIFEST_NAME} (a leftover of another run?)"
                                   + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        for rel, record in files.items():
            if not isinstance(record, dict) or file_record(self.root / rel) != record:
                raise _fail(self.root, f"output {rel} does not match {MANIFEST_NAME} (truncated, damaged or "
                                       "replaced after the run)")

    @property
    def digest(self) -> str:
        """The manifest's digest: renders and reports record it to tell which run they belong to."""
        return self.manifest["digest"]

    @property
    def variants(self) -> list[dict[str, Any]]:
        return self.manifest["variants"]

    @property
    def media(self) -> list[str]:
        """``["video"]``, ``["audio"]`` or both."""
        return self.manifest["media"]

    @property
    def num_prompts(self) -> int:
        return len(self.manifest["prompts"])

    def variant(self, name: str) -> dict[str, Any]:
        for v in self.variants:
            if v["name"] == name:
                return v
        raise KeyError(f"{self.root}: no variant {name!r}; have {', '.join(v['name'] for v in self.variants)}")

    def load(self, variant: str, prompt_index: int, media: str) -> torch.Tensor:
        """The raw output of ``variant`` for prompt ``prompt_index``: frames ``(F, C, H, W)`` or audio ``(C, T)``."""
        entry = self.variant(variant)["outputs"][prompt_index]
        path = self.root / entry[media]
        try:
            if media == "video":
                return load_frames(path)
            audio, rate = load_wav(path)
        except Exception as err:  # safetensors / soundfile raise their own types for unreadable files
            raise RunFolderError(f"{path}: cannot read this {media} output ({type(err).__name__}: {err})") from None
        if rate != self.manifest["sample_rate"]:
            raise RunFolderError(f"{path}: sample rate {rate} != manifest's {self.manifest['sample_rate']}")
        return audio


def check_output_folder(target: Path, overwrite: bool = False, is_ours: Any = None) -> None:
    """Refuse, before any work, an output folder that cannot be written as asked.

    ``target`` may be absent, empty, or (with ``overwrite``) a folder that ``is_ours(target)`` accepts
    (default: it holds a ``manifest.json``); never a file, a path inside a file, a folder of other data,
    or a place this process may not write.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputFolderError(f"{target} is a file, not a folder")
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputFolderError(f"{target} lies inside {ancestor}, which is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK) or (target.is_dir() and not os.access(target, os.W_OK | os.X_OK)):
        where = target if target.exists() else ancestor
        raise OutputNotWritableError(f"{target}: no permission to write in {where}")
    if target.is_dir() and any(target.iterdir()):
        is_ours = is_ours or (lambda folder: (folder / MANIFEST_NAME).is_file())
        if not overwrite:
            raise OutputFolderError(f"{target} already exists and is not empty; pass --overwrite to replace it "
                                    "(the old folder is kept until the new one is complete)")
        if not is_ours(target):
            raise OutputFolderError(f"{target} holds files that this tool did not write; it will not replace "
                                    "it even with --overwrite (choose another folder)")


@contextmanager
def staged_folder(target: str | Path, overwrite: bool = False, is_ours: Any = None) -> Iterator[Path]:
    """Yield a fresh hidden sibling folder of ``target`` to write into; on success swap it in place of
    ``target`` (the old folder, if any, is removed only after the swap), on any exception (Ctrl-C
    included) delete it and leave ``target`` as it was."""
    target = Path(target).absolute()
    check_output_folder(target, overwrite, is_ours)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = target.parent / f".{target.name}.partial-{token}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{token}"
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        if old.exists():
            os.rename(old, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
