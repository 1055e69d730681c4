"""Real-size cache bytes (shape arithmetic) and the GPU measurement entry at toy size on the CPU."""

import json

from octopus_diffusers.cache import CachePolicy
from octopus_diffusers.cache import gpu_bench, memory


def test_real_size_bytes_by_hand():
    # bf16 (codec none): 30 blocks x K,V x (21 frames x 1560 + 512 text) tokens x 12 x 128 x 2 bytes
    est = memory.cache_bytes(CachePolicy(codec="none"), memory.latent_frames(81))
    assert est["nbytes"] == est["bf16_nbytes"] == 30 * 2 * (21 * 1560 + 512) * 12 * 128 * 2
    assert [memory.latent_frames(f) for f in (81, 161, 321)] == [21, 42, 81]
    # TurboQuant 2 bits at d=128: 32 code bytes + a 2-byte norm per vector; sink and newest chunks exact
    tq = memory.cache_bytes(CachePolicy(codec="turboquant", bits=2), 21)
    chunk_vectors = 30 * 2 * 3 * 1560 * 12
    assert tq["nbytes"] == chunk_vectors * (2 * 256 + 5 * 34) + 30 * 2 * 512 * 12 * 34
    budget = 80 * 10**9
    fit = memory.frames_that_fit(CachePolicy(codec="turboquant", bits=2), budget)
    latent = 1 + (fit - 1) // 4
    assert memory.cache_bytes(CachePolicy(codec="turboquant", bits=2), latent)["nbytes"] <= budget
    assert memory.cache_bytes(CachePolicy(codec="turboquant", bits=2), latent + 3)["nbytes"] > budget


def test_memory_markdown(tmp_path):
    out = tmp_path / "memory.md"
    assert memory.main(["--out", str(out), "--codecs", "fp8"]) == 0
    text = out.read_text()
    assert "| default | bf16 (none) | 16 | 16.000 | 6.13 |" in text and "| all compressed | fp8 | 8 |" in text
    assert "Commit:" in text and "torch" in text


def test_gpu_bench_runs_at_toy_size(tmp_path):
    out = tmp_path / "bench.json"
    assert gpu_bench.main(["--out", str(out), "--toy", "--quick", "--device", "cpu"]) == 0
    rows = {r["config"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"dense-bf16", "none", "octopus-2b", "octopus-4b", "turboquant-2b", "turboquant-4b"}
    assert all(r["finite"] and r["chunks"] == 2 for r in rows.values())
    assert rows["turboquant-2b"]["cache_bytes"] < rows["turboquant-4b"]["cache_bytes"] < rows["none"]["cache_bytes"]
    assert rows["octopus-2b"]["peak_tracked_bytes"] < rows["none"]["peak_tracked_bytes"]
    assert (tmp_path / "bench.md").is_file()
