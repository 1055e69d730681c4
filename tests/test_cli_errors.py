"""The command's failure modes: every bad value, damaged input, unavailable environment, out-of-memory and
Ctrl-C ends with ONE ``octopus-diffusers <command>: error:`` line and its documented exit code, never a
traceback and never a half-written folder; reruns replace a run folder whole or leave it untouched."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from octopus_diffusers import cli
from octopus_diffusers.cli import EXIT_CODE_MEANINGS, ExitCode, build_parser, main
from octopus_diffusers.pipelines import runner
from octopus_diffusers.pipelines.run_folder import RunFolder, file_record, read_json
from octopus_diffusers.pipelines.tiny import build_tiny_pipeline

TINY = ["run", "--model", "wan2.1-t2v-1.3b", "--tiny", "--dtype", "float32", "--device", "cpu", "--quiet"]
AUDIO = ["run", "--model", "stable-audio-open", "--tiny", "--dtype", "float32", "--device", "cpu", "--quiet"]


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"octopus-diffusers {command}: error: "), err
    return err


def _call(argv) -> int:
    try:
        return main(argv)
    except SystemExit as done:  # argparse
        return done.code


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real (tiny Wan) run folder: baseline and TurboQuant at 4 true bits per scalar."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*TINY, "--codecs", "turboquant", "--rates", "4", "--out", str(out)]) == 0
    return out


def test_exit_codes_are_documented_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert len(set(ExitCode)) == len(EXIT_CODE_MEANINGS) == 7
    for code, meaning in EXIT_CODE_MEANINGS.items():
        assert f"{code.value:<4} {meaning}" in out


def _file(tmp_path):
    (tmp_path / "afile").write_text("x")
    return tmp_path / "afile"


def _old_demo(tmp_path):
    (tmp_path / "demo" / "video").mkdir(parents=True)
    (tmp_path / "demo" / "video" / "manifest.json").write_text("{}")
    return tmp_path / "demo"


def _junk_embeds(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x01 this is not safetensors")
    return tmp_path / "junk.safetensors"


def _embeds(tmp_path, **tensors):
    save_file(tensors, str(tmp_path / "e.safetensors"))
    return tmp_path / "e.safetensors"


FAST_CASES = {  # argv (tmp_path -> list), exit code, message fragment; all fail before a model is built
    "height not a multiple": (lambda t: [*TINY, "--height", "17", "--out", str(t / "o")], 2, "multiple of 16"),
    "height zero": (lambda t: [*TINY, "--height", "0", "--out", str(t / "o")], 2, "--height"),
    "frames not 4k+1": (lambda t: [*TINY, "--frames", "8", "--out", str(t / "o")], 2, "needs 4k+1 frames (e.g. 5)"),
    "frames for audio": (lambda t: [*AUDIO, "--frames", "9", "--out", str(t / "o")], 2, "--frames is for video"),
    "seconds nan": (lambda t: [*AUDIO, "--seconds", "nan", "--out", str(t / "o")], 2, "finite number > 0"),
    "device nonsense": (lambda t: [*TINY[:-3], "--device", "nonsense", "--out", str(t / "o")], 2,
                        "not a torch device"),
    "device mps": (lambda t: [*TINY[:-3], "--device", "mps", "--out", str(t / "o")], 2, "only cpu, cuda"),
    "seed negative": (lambda t: [*TINY, "--seed", "-1", "--out", str(t / "o")], 2, "--seed must be an integer in"),
    "seed too large": (lambda t: [*TINY, "--seed", str(2**64), "--out", str(t / "o")], 2, "0..4294967295"),
    "seed fractional": (lambda t: [*TINY, "--seed", "1.9", "--out", str(t / "o")], 2, "expected an integer"),
    "bits and rates": (lambda t: [*TINY, "--bits", "3", "--rates", "3", "--out", str(t / "o")], 2, "not both"),
    "junk embeddings": (lambda t: [*TINY, "--prompt-embeds", str(_junk_embeds(t)), "--out", str(t / "o")], 3,
                        "not a readable safetensors file"),
    "missing embeddings": (lambda t: [*TINY, "--prompt-embeds", str(t / "nope.st"), "--out", str(t / "o")], 3,
                           "no such file"),
    "embeddings without prompt_embeds": (
        lambda t: [*TINY, "--prompt-embeds", str(_embeds(t, x=torch.ones(2))), "--out", str(t / "o")], 3,
        "no 'prompt_embeds' tensor"),
    "embeddings with NaN": (
        lambda t: [*TINY, "--prompt-embeds", str(_embeds(t, prompt_embeds=torch.full((1, 4, 32), float("nan")))),
                   "--out", str(t / "o")], 3, "NaN or Inf"),
    "out is a file": (lambda t: [*TINY, "--out", str(_file(t))], 2, "is a file, not a folder"),
    "out inside a file": (lambda t: [*TINY, "--out", str(_file(t) / "run")], 2, "which is a file"),
    "render amplify negative": (lambda t: ["render", str(t), "--amplify", "-5"], 2, "finite number > 0"),
    "render amplify nan": (lambda t: ["render", str(t), "--amplify", "nan"], 2, "finite number > 0"),
    "render amplify inf": (lambda t: ["render", str(t), "--amplify", "inf"], 2, "finite number > 0"),
    "eval of no folder": (lambda t: ["eval", str(t / "absent")], 3, "no such folder"),
    "eval out is a file": (lambda t: ["eval", str(t), "--out", str(_file(t))], 2, "is a file"),
    "eval out inside outputs": (lambda t: ["eval", str(t), "--out", str(t / "outputs" / "x")], 2,
                                "inside the run's outputs/"),
    "render out inside outputs": (lambda t: ["render", str(t), "--out", str(t / "outputs")], 2,
                                  "inside the run's outputs/"),
    "demo out holding other files": (lambda t: ["demo", "--out", str(_file(t).parent)], 2,
                                     "holds other files than the demo's"),
    "demo over an existing demo": (lambda t: ["demo", "--out", str(_old_demo(t))], 2, "pass --overwrite"),
    "bench out is a file": (lambda t: ["bench", "codecs", "--out", str(_file(t)), "--quick"], 2, "is a file"),
    "causal without weights or --tiny": (lambda t: ["run", "--model", "self-forcing", "--out", str(t / "o")], 2,
                                         "give --weights DIR"),
    "trained clips model with --tiny": (lambda t: ["run", "--model", "clips", "--tiny", "--out", str(t / "o")], 2,
                                        "the trained model ships with the package; --tiny does not apply"),
    "causal with a prompt": (lambda t: ["run", "--model", "self-forcing", "--tiny", "--prompt", "a cat", "--out",
                                        str(t / "o")], 2, "--prompt is not an option of causal runs"),
    "chunks for a bidirectional model": (lambda t: [*TINY, "--chunks", "3", "--out", str(t / "o")], 2,
                                         "--chunks is for the chunk-by-chunk models"),
}


@pytest.mark.parametrize("case", sorted(FAST_CASES))
def test_bad_values_give_one_line_and_their_code(case, tmp_path, capsys, monkeypatch):
    argv, code, message = FAST_CASES[case]
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("a model was built"))
    argv = argv(tmp_path)
    assert _call(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and message in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_an_environment_error(tmp_path, capsys):
    assert main([*TINY[:-3], "--device", "cuda", "--out", str(tmp_path / "o")]) == ExitCode.ENVIRONMENT
    assert "CUDA is not available" in _one_line(capsys, "run")
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("bench", ["kernels", "cache"])
def test_gpu_benchmarks_without_a_gpu_are_an_environment_error(bench, capsys):
    assert main(["bench", bench, "--out", "x.json"]) == ExitCode.ENVIRONMENT
    assert f"bench {bench} needs a CUDA GPU" in _one_line(capsys, "bench")


def test_unwritable_out_is_an_environment_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert main([*TINY, "--out", str(tmp_path / "o")]) == ExitCode.ENVIRONMENT
    assert "no permission to write" in _one_line(capsys, "run")


def test_fractional_bits_hint_names_an_option_the_cli_has(tmp_path, capsys):
    assert main([*TINY, "--codecs", "octopus", "--bits", "2.5", "--out", str(tmp_path / "o")]) == ExitCode.USAGE
    err = _one_line(capsys, "run")
    assert "cannot quantize with codec 'octopus' at 2.5 bits" in err and "use --rates 2.5" in err
    run_options = {o for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions
                   for o in a.option_strings}
    assert "--rates" in run_options and not (tmp_path / "o").exists()


def test_an_existing_run_folder_needs_overwrite(tiny_run, capsys):
    before = RunFolder(tiny_run).digest
    assert main([*TINY, "--codecs", "octopus", "--rates", "4", "--out", str(tiny_run)]) == ExitCode.USAGE
    assert "pass --overwrite" in _one_line(capsys, "run")
    assert RunFolder(tiny_run).digest == before


def test_interrupted_rerun_keeps_the_old_run_and_leaves_nothing_behind(tiny_run, tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of an --overwrite rerun: exit 130, one line, the previous run intact (eval still
    scores it), no partial folder beside it."""
    before = RunFolder(tiny_run).digest
    calls = []
    real = runner._generate

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # after the baseline of the new run was written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_generate", interrupted)
    argv = [*TINY, "--codecs", "none,octopus", "--rates", "4", "--out", str(tiny_run), "--overwrite"]
    assert main(argv) == ExitCode.INTERRUPTED
    assert "interrupted" in _one_line(capsys, "run")
    assert RunFolder(tiny_run).digest == before
    assert sorted(p.name for p in tiny_run.parent.iterdir()) == ["run"]
    assert main(["eval", str(tiny_run), "--lpips", "off", "--quiet"]) == 0


def test_out_of_memory_has_its_own_code(tmp_path, capsys, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(type(build_tiny_pipeline("wan").pipe), "__call__", oom)  # inside the pipeline call
    assert main([*TINY, "--codecs", "turboquant", "--rates", "4", "--out", str(tmp_path / "o")]) == 5
    assert "out of memory. Try --cpu-offload" in _one_line(capsys, "run") and not (tmp_path / "o").exists()
    monkeypatch.setattr(runner, "plan_variants", oom)  # anywhere else
    assert main([*TINY, "--codecs", "turboquant", "--rates", "4", "--out", str(tmp_path / "o")]) == 5
    assert "Tried to allocate 20.00 GiB; out of memory. Try --cpu-offload" in _one_line(capsys, "run")


def test_codec_and_pipeline_refusals_during_generation_are_usage_errors(tmp_path, capsys, monkeypatch):
    from octopus_diffusers.codecs import CodecError

    pipe_class = type(build_tiny_pipeline("wan").pipe)
    for error, message in ((CodecError("K has NaN"), "quantized attention failed during generation: K has NaN"),
                           (ValueError("num_frames must be 4k+1"), "WanPipeline refused the call: num_frames")):
        def refuse(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(pipe_class, "__call__", refuse)
        assert main([*TINY, "--codecs", "turboquant", "--rates", "4", "--out", str(tmp_path / "o")]) == 2
        assert message in _one_line(capsys, "run") and not (tmp_path / "o").exists()


def test_unexpected_errors_are_one_line_unless_traceback_is_asked(tmp_path, capsys, monkeypatch):
    def bug(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_eval", bug)
    assert main(["eval", str(tmp_path)]) == ExitCode.INTERNAL
    assert "internal error (ZeroDivisionError: division by zero); rerun with --traceback" in _one_line(capsys, "eval")
    assert main(["--traceback", "eval", str(tmp_path)]) == ExitCode.INTERNAL
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def _damage_output(run):
    path = next((run / "outputs/turboquant-3b").iterdir())
    path.write_bytes(path.read_bytes()[:-10])


def _edit_manifest(run):
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["variants"][1]["bits_per_scalar"] = 1.0
    (run / "manifest.json").write_text(json.dumps(manifest))


DAMAGE = {
    "truncated output": (_damage_output, "does not match manifest.json"),
    "hand-edited manifest": (_edit_manifest, "changed after the run"),
    "extra output": (lambda r: shutil.copytree(r / "outputs/turboquant-3b", r / "outputs/octopus-2b"),
                     "is not in manifest.json"),
    "manifest garbage": (lambda r: (r / "manifest.json").write_bytes(b"\xff\xfe"), "not readable JSON"),
    "manifest gone": (lambda r: (r / "manifest.json").unlink(), "no manifest.json"),
}


@pytest.mark.parametrize("command", ["eval", "render"])
@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_run_folders_are_refused(tiny_run, tmp_path, case, command, capsys):
    run = tmp_path / "damaged"
    shutil.copytree(tiny_run, run)
    damage, message = DAMAGE[case]
    damage(run)
    assert main([command, str(run), "--quiet", *(["--lpips", "off"] if command == "eval" else [])]) == 3
    assert message in _one_line(capsys, command)


def test_rerun_with_overwrite_replaces_the_folder_and_its_renders(tiny_run, tmp_path):
    """An --overwrite rerun with other codecs leaves no output, render or report link of the old variants."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main([*TINY, "--codecs", "uniform", "--rates", "3", "--out", str(run), "--overwrite"]) == 0
    names = [v["name"] for v in read_json(run / "manifest.json")["variants"]]
    assert names == ["baseline", "uniform-1b-g16"]
    assert sorted(p.name for p in (run / "outputs").iterdir()) == sorted(names)
    assert sorted(p.name for p in (run / "renders").iterdir()) == ["compare_3bps_prompt0.mp4", "index.json"]
    assert "turboquant" not in (run / "report.md").read_text()


def test_eval_links_only_renders_of_this_run(tiny_run, tmp_path):
    """Renders copied in from another run (or left from an older one) are not linked from the report."""
    other = tmp_path / "other"
    assert main([*TINY, "--codecs", "uniform", "--rates", "3", "--out", str(other), "--skip-eval"]) == 0
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "renders")
    shutil.copytree(other / "renders", run / "renders")
    assert main(["eval", str(run), "--lpips", "off", "--quiet"]) == 0
    report = (run / "report.md").read_text()
    assert "## Renders" not in report and "compare_3bps" not in report
    assert main(["render", str(run), "--quiet"]) == 0  # replaces the foreign renders folder as a whole
    assert sorted(p.name for p in (run / "renders").iterdir()) == ["compare_4bps_prompt0.mp4", "index.json"]
    assert main(["eval", str(run), "--lpips", "off", "--quiet"]) == 0
    assert "renders/compare_4bps_prompt0.mp4" in (run / "report.md").read_text()


def test_tiny_run_honours_prompt_embeds(tmp_path, capsys):
    """`run --tiny --prompt-embeds FILE` generates from FILE: the tiny pipeline's own embeddings reproduce its
    baseline exactly, other embeddings (another length) change it; wrong feature sizes are refused."""
    tiny = build_tiny_pipeline("wan")
    own = {k: v for k, v in tiny.inputs.items() if isinstance(v, torch.Tensor)}
    save_file(own, str(tmp_path / "own.st"))
    other = {"prompt_embeds": torch.randn(1, 7, 32, generator=torch.Generator().manual_seed(9)),
             "negative_prompt_embeds": own["negative_prompt_embeds"]}
    save_file(other, str(tmp_path / "other.st"))
    base = tiny.generate(seed=0)["video"][0]
    for name, same in (("own", True), ("other", False)):
        out = tmp_path / f"run_{name}"
        argv = [*TINY, "--frame-dtype", "float32", "--codecs", "turboquant", "--rates", "4", "--skip-render",
                "--skip-eval", "--prompt-embeds", str(tmp_path / f"{name}.st"), "--out", str(out)]
        assert main(argv) == 0
        folder = RunFolder(out)
        assert folder.manifest["prompts"] == ["prompt embeddings from file"]
        assert folder.manifest["prompt_embeds"]["sha256"] == file_record(tmp_path / f"{name}.st")["sha256"]
        assert folder.manifest["prompt_embeds"]["file"] == str(tmp_path / f"{name}.st")
        assert torch.equal(folder.load("baseline", 0, "video"), base) is same, name
    save_file({"prompt_embeds": torch.randn(1, 16, 5)}, str(tmp_path / "narrow.st"))
    assert main([*TINY, "--prompt-embeds", str(tmp_path / "narrow.st"), "--out", str(tmp_path / "n")]) == 3
    assert "last size 32" in _one_line(capsys, "run")
    save_file({"prompt_embeds": own["prompt_embeds"], "image": torch.ones(1)}, str(tmp_path / "extra.st"))
    assert main([*TINY, "--prompt-embeds", str(tmp_path / "extra.st"), "--out", str(tmp_path / "n")]) == 3
    assert "'image' is not an input of the tiny wan pipeline" in _one_line(capsys, "run")
    assert not (tmp_path / "n").exists()
