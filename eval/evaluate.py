"""Score every variant of a run folder against its baseline, prompt by prompt.

The baseline is scored against itself too: a deterministic pipeline must give infinite PSNR there,
which makes the first row of every report a sanity check. Results are plain dicts (ready for
:mod:`octopus_diffusers.eval.report` and :mod:`octopus_diffusers.eval.plots`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from octopus_diffusers.pipelines.run_folder import BASELINE, RunFolder

from .audio_metrics import audio_metrics
from .video_metrics import HIGHER_IS_BETTER as VIDEO_HIGHER_IS_BETTER
from .video_metrics import video_metrics


#: What the results keep of each manifest variant besides its metrics.
VARIANT_KEYS = ("name", "codec", "bits", "options", "target_rate", "predicted_bits_per_scalar", "bits_per_scalar",
                "kv", "seconds")


def _aggregate_video(per_prompt: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean of the per-prompt means, the overall min/max, and where the worst frame is."""
    summary: dict[str, dict[str, Any]] = {}
    for metric in per_prompt[0]["summary"]:
        stats = [p["summary"][metric] for p in per_prompt]
        pick = min if VIDEO_HIGHER_IS_BETTER[metric] else max
        worst_prompt = stats.index(pick(stats, key=lambda s: s["worst"]))
        summary[metric] = {"mean": sum(s["mean"] for s in stats) / len(stats),
                           "min": min(s["min"] for s in stats), "max": max(s["max"] for s in stats),
                           "worst": stats[worst_prompt]["worst"], "worst_prompt": worst_prompt,
                           "worst_frame": stats[worst_prompt]["worst_frame"]}
    return summary


def _aggregate_audio(per_prompt: list[dict[str, Any]]) -> dict[str, float]:
    metrics = per_prompt[0]["summary"]
    return {m: sum(p["summary"][m] for p in per_prompt) / len(per_prompt) for m in metrics}


def evaluate_run(run: RunFolder | str | Path, lpips: bool | Literal["auto"] = "auto",
                 progress: bool = True) -> dict[str, Any]:
    """Metrics of every variant of ``run`` against the baseline, per prompt and aggregated.

    Returns ``{"run": {...}, "variants": [{"name", "codec", "bits", "options", "target_rate",
    "bits_per_scalar", "kv", "seconds", "metrics": {media: {"per_prompt": [...], "summary": {...}}}}]}``
    (variants in manifest order).
    """
    run = run if isinstance(run, RunFolder) else RunFolder(run)
    manifest = run.manifest
    baselines = {(i, m): run.load(BASELINE, i, m) for i in range(run.num_prompts) for m in run.media}
    variants = []
    work = [(v, i, m) for v in run.variants for i in range(run.num_prompts) for m in run.media]
    bar = tqdm(total=len(work), desc="evaluating", unit="output", disable=not progress)
    for v in run.variants:
        metrics: dict[str, Any] = {}
        for media in run.media:
            per_prompt = []
            for i in range(run.num_prompts):
                test = run.load(v["name"], i, media)
                if media == "video":
                    result = video_metrics(baselines[(i, media)], test, lpips=lpips).to_dict()
                else:
                    result = audio_metrics(baselines[(i, media)], test, manifest["sample_rate"]).to_dict()
                per_prompt.append(result)
                bar.update()
            aggregate = _aggregate_video if media == "video" else _aggregate_audio
            metrics[media] = {"per_prompt": per_prompt, "summary": aggregate(per_prompt),
                              "skipped": per_prompt[0]["skipped"]}
        variants.append({key: v.get(key) for key in VARIANT_KEYS} | {"metrics": metrics})
    bar.close()
    run_info = {key: manifest.get(key) for key in ("model", "media", "seed", "steps", "prompts", "fps",
                                                   "sample_rate", "environment",
                                                   "rate_matching")}
    run_info["manifest_digest"] = run.digest
    return {"run": run_info, "variants": variants}
