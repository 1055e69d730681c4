"""The one provenance record: what every result file stores about where it was computed."""

from __future__ import annotations

import subprocess

from octopus_diffusers import env


def test_record_holds_machine_versions_commit_date_and_command():
    record = env.environment("cpu", packages=("pytest", "no-such-distribution"), command="bench codecs --quick")
    for key in ("git_commit", "date", "command", "device", "gpu", "cuda", "python", "platform", "torch",
                *env.RECORDED_PACKAGES):
        assert key in record, key
    assert record["command"] == "bench codecs --quick"
    assert record["device"].startswith("cpu (") and "torch threads" in record["device"]
    assert record["gpu"] is None and record["cuda"] is None
    assert record["date"].endswith("Z") and record["date"][4] == "-"
    assert record["pytest"] != "not installed" and record["no-such-distribution"] == "not installed"
    import torch

    assert record["torch"] == torch.__version__


def test_commit_is_heads_and_marked_when_result_sources_are_modified(tmp_path):
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    (tmp_path / "src.py").write_text("a = 1\n")
    (tmp_path / "notes.md").write_text("x\n")
    run("add", ".")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert env.git_commit(("src.py",), root=tmp_path) == head
    (tmp_path / "notes.md").write_text("y\n")  # not a result source
    assert env.git_commit(("src.py",), root=tmp_path) == head
    (tmp_path / "src.py").write_text("a = 2\n")
    assert env.git_commit(("src.py",), root=tmp_path) == head + " (with uncommitted changes)"


def test_outside_a_checkout_the_commit_comes_from_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(env.COMMIT_VARIABLE, raising=False)
    assert env.git_commit(root=tmp_path) is None
    monkeypatch.setenv(env.COMMIT_VARIABLE, "abc1234")
    assert env.git_commit(root=tmp_path) == "abc1234"
