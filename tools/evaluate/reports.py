"""Reports: the Markdown table, the JSON/CSV files and the PNG of examples."""

from __future__ import annotations

import csv
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from evpipe.kernels.quality import psnr
from evpipe.nodes.predict.integration import polarity_sum
from evpipe.tools.evaluate.registry import BASELINES
from evpipe.tools.evaluate.scoring import PSNR_CAP_DB


def markdown_table(results: list[dict[str, Any]], models: list[str]) -> str:
    """Markdown table of every source's summaries: mean ± std over samples; ``models`` are shown in bold."""
    has_flicker = any(s["flicker_x100_mean"] is not None for r in results for s in r["summary"].values())
    has_colour = any(r.get("colour") for r in results)
    columns = ["data", "k", "method", "PSNR (dB)", "SSIM", *(["luma PSNR (dB)"] if has_colour else []),
               *(["flicker ×100"] if has_flicker else []), "ms/call", "n"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for result in results:
        for method, s in result["summary"].items():
            cells = [
                result["label"],
                "–" if result["k"] is None else str(result["k"]),
                f"**{method}** (model)" if method in models and method not in _BASELINE_NAMES else method,
                f"{s['psnr_mean']:.2f} ± {s['psnr_std']:.2f}",
                f"{s['ssim_mean']:.3f} ± {s['ssim_std']:.3f}",
            ]
            if has_colour:
                cells.append(f"{s['luma_psnr_mean']:.2f} ± {s['luma_psnr_std']:.2f}")
            if has_flicker:
                cells.append("–" if s["flicker_x100_mean"] is None else f"{s['flicker_x100_mean']:.2f}")
            cells += [f"{s['timing_ms']['median_ms']:.2f}", str(s["n"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_BASELINE_NAMES = {name for names in BASELINES.values() for name in names}


def _panel_image(image: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, 3) image for display; the middle frame of a clip."""
    return image[len(image) // 2] if image.ndim == 4 or (image.ndim == 3 and image.shape[-1] != 3) else image


def save_examples_png(path: Path, task: str, results: list[dict[str, Any]], methods: list[str]) -> None:
    """Grid: one row per example; columns input(s), events (predict/deblur), every method, ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(result["label"], example) for result in results for example in result["examples"]]
    inputs = {"predict": ["anchor"], "deblur": ["blurry"], "upsample": ["frame0", "frame1"], "restore": ["degraded"]}
    show_events = task in ("predict", "deblur")
    n_cols = len(inputs[task]) + show_events + len(methods) + 1
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.1 * n_cols, 2.3 * len(rows)), squeeze=False)
    for r, (label, example) in enumerate(rows):
        case, panels = example["case"], []
        panels += [(name, _panel_image(case[name]), "gray") for name in inputs[task]]
        if show_events:
            height, width = case["target"].shape[:2]
            panels.append((f"events ({len(case['events'])})", polarity_sum(case["events"], height, width), "events"))
        for method in methods:
            output = example["outputs"][method]
            value = min(psnr(case["target"], output), PSNR_CAP_DB)
            panels.append((f"{method}\n{value:.2f} dB", _panel_image(output), "gray"))
        panels.append(("ground truth", _panel_image(case["target"]), "gray"))
        for c, (title, image, kind) in enumerate(panels):
            ax = axes[r, c]
            if kind == "events":
                limit = max(1.0, float(np.percentile(np.abs(image), 99)))
                ax.imshow(image, cmap="bwr", vmin=-limit, vmax=limit)
            else:
                ax.imshow(np.clip(image, 0, 1), cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"{label}\n{case['sequence'][:22]} #{case['index']}", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_reports(out: Path, name: str, task: str, models: list[str], results: list[dict[str, Any]],
                  settings: dict[str, Any]) -> dict[str, Path]:
    """Write <name>.md, .json, _per_sequence.csv and .png under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{name}.md", "json": out / f"{name}.json", "csv": out / f"{name}_per_sequence.csv",
             "png": out / f"{name}.png"}
    methods = list(results[0]["summary"])
    table = markdown_table(results, models)
    model = ", ".join(models)
    fitted = list(dict.fromkeys(  # one line per source and method (the k blocks share their fit)
        f"- {r['label']} {m}: " + ", ".join(f"{k}={v:.4g}" for k, v in s["fitted"].items())
        for r in results for m, s in r["summary"].items() if s["fitted"]))
    if "videos" in settings:
        protocol = (f"(real colour clips in `{settings['videos']}`, scaled to {settings['width']} px wide, at most "
                    f"{settings['max_frames'] or 'all'} frames each; "
                    + ("every other frame dropped, the dropped frames scored" if task == "upsample" else
                       f"windows of {settings['clip_length']} frames through the PSF, {settings['bits']}-bit")
                    + "; free baseline parameters fitted on the other clips).\n")
    else:
        protocol = (f"(dataset `{settings['dataset_name']}`, split `{settings['split']}`: sources never seen in "
                    "training; free baseline parameters fitted on the training split).\n")
    paths["md"].write_text(
        f"# {task}: {model} vs baselines\n\n"
        f"Written by `{settings['command']}` " + protocol
        + ("Real recordings: scored on the second half of their consecutive APS frame pairs, baseline parameters "
           "fitted on the first half; frames centre-cropped to multiples of 16.\n" if settings.get("real_recordings")
           else "")
        + f"\n{table}\n\nMean ± std over samples; flicker ×100 = 100 × temporal_consistency_error (predict: chains of "
        "consecutive k = 1 predictions; restore: per clip), averaged over sequences; ms/call = median model call.\n"
        + ("\nFitted parameters:\n" + "\n".join(fitted) + "\n" if fitted else "")
        + f"\nExamples: `{paths['png'].name}`; per-sequence results: `{paths['csv'].name}`.\n"
    )
    report = {"task": task, "model": model, "settings": settings,
              "machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "processor": platform.processor()},
              "results": [{"data": r["label"], "k": r["k"], "summary": r["summary"]} for r in results],
              "per_sequence": [row for r in results for row in r["rows"]]}
    paths["json"].write_text(json.dumps(report, indent=1))
    with paths["csv"].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["data", "k", "method", "sequence", "n", "psnr", "ssim", "luma_psnr",
                                               "flicker_x100"])
        writer.writeheader()
        writer.writerows(report["per_sequence"])
    save_examples_png(paths["png"], task, results, methods)
    return paths
