"""python -m training.explain_report: every attribution method on held-out digits, scored.

Loads a classify bundle (default `models:/classify@production`) exactly as the explain service
does, runs each method (Grad-CAM and Guided Grad-CAM once per conv block) on the first N images
of the fixed test split, writes one grid PNG per method and layer plus a table of mean
fidelity, sparsity and time per explanation, and logs them as artifacts (`explain_report/`) of
the classify model's source training run: reproducible saliency visualizations of that model.

Model-level views go with them (`training.explain_figures`): Grad-CAM measured per block (map
resolution, deletion and insertion AUC; the layer the explain service picks by the same rule),
PCA and t-SNE of the penultimate embeddings with silhouette scores, per-layer activation
histograms and the first conv's filters. The default run took 6 minutes on one torch thread of
a shared 2-core machine (occlusion 2.3 min of it; the views 42 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.methods import BASELINE_METHODS, METHODS

COLUMNS = ("deletion_auc", "insertion_auc", "infidelity", "sensitivity", "gini", "top10_mass")
LAYER_METHODS = ("grad_cam", "guided_grad_cam")
ALL_METHODS = METHODS + BASELINE_METHODS
TILES_PER_ROW = 8


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.explain_report", description=__doc__)
    p.add_argument("--model-uri", default="models:/classify@production")
    p.add_argument("--images", type=int, default=16, help="held-out images explained per method")
    p.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated")
    p.add_argument("--layers", help="Grad-CAM layers, comma-separated (default: every block)")
    p.add_argument(
        "--embed-images", type=int, default=500, help="held-out images in the PCA/t-SNE views"
    )
    p.add_argument("--out", type=Path, default=Path(".modelplane/explain-report"))
    p.add_argument("--no-log", action="store_true", help="write files only, log nothing")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = available cores)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("MODEL_CACHE_DIR", ".modelplane/cache")),
    )
    p.add_argument(
        "--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    )
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown or not methods:
        p.error(f"unknown methods {unknown}; choose from {', '.join(ALL_METHODS)}")
    if not 1 <= args.images <= 1000:
        p.error("--images must be between 1 and 1000")
    if not 10 <= args.embed_images <= 5000:
        p.error("--embed-images must be between 10 and 5000")
    args.methods = methods
    return args


def say(message: str) -> None:
    print(f"[explain-report] {message}", flush=True)


@dataclass
class Row:
    """One method (and layer): its scores per image, time per explanation and its tiles."""

    method: str
    layer: str
    scores: list[dict[str, Any]] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    tiles: list[Any] = field(default_factory=list)

    def means(self) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for column in COLUMNS:
            values = [s[column] for s in self.scores if s[column] is not None]
            out[column] = float(np.mean(values)) if values else None
        out["ms_per_explanation"] = float(np.mean(self.ms))
        return out


def explain_rows(args: argparse.Namespace, bundle: Any) -> tuple[list[Row], str]:
    """Run every (method, layer) on the first N test images; returns the rows and the model."""
    import torch

    from models import render
    from models.attribution import (
        Explainer,
        block_layers,
        feature_maps,
        random_map,
        to_map,
    )
    from models.classify import load_torch_bundle
    from models.fidelity import score
    from models.methods import MethodParams
    from shared.media import ImageSpec, gray_to_image
    from shared.settings import available_cores
    from training.data import load_test_set

    torch.set_num_threads(args.threads or available_cores())
    spec = ImageSpec.from_manifest(bundle.preprocessing)
    model = load_torch_bundle(bundle)
    maps = feature_maps(model, spec)
    layers = args.layers.split(",") if args.layers else block_layers(model, maps)
    layers = [name for name in layers if "layer" in name or "block" in name] or layers
    missing = [name for name in layers if name not in maps]
    if missing:
        raise SystemExit(f"error: no feature-map layer(s) {missing}; blocks: {list(maps)[:12]}")
    explainer = Explainer.build(model, spec)
    test = load_test_set(spec, bundle.preprocessing.get("classes"))
    count = min(args.images, len(test.inputs))
    jobs = [(m, layer) for m in args.methods for layer in (layers if m in LAYER_METHODS else [""])]
    rows = [Row(method, layer) for method, layer in jobs]
    for row in rows:
        started = time.perf_counter()
        params = MethodParams(layer=row.layer or None)
        for i in range(count):
            x = torch.from_numpy(test.inputs[i : i + 1])
            target = int(torch.argmax(explainer.probabilities(x)[0]))
            begun = time.perf_counter()
            if row.method == "random":
                attribution, saliency = None, random_map(spec, i)
            else:
                attribution = explainer.attribute(x, target, row.method, params)
                saliency = to_map(attribution)
            row.ms.append((time.perf_counter() - begun) * 1000)
            scores = score(
                explainer,
                x,
                saliency,
                target,
                attribution=attribution,
                method=row.method,
                params=params,
            )
            row.scores.append(scores.to_dict())
            view = gray_to_image(test.images[i]).resize((spec.width, spec.height))
            title = f"{test.label_names[test.labels[i]]}->{bundle.labels[target]}"
            row.tiles.append((title, render.overlay(view, saliency)))
        name = row.method + (f" @ {row.layer}" if row.layer else "")
        say(f"{name}: {count} images in {time.perf_counter() - started:.1f}s")
    return rows, model.__class__.__name__


def model_views(args: argparse.Namespace, bundle: Any) -> dict[str, Any]:
    """Grad-CAM per layer, embeddings, activation histograms and filters into `args.out`."""
    import torch

    from models.attribution import Explainer, block_layers, cam_candidates, feature_maps
    from models.classify import load_torch_bundle
    from models.fidelity import best_layer, layer_scores
    from shared.media import ImageSpec
    from training import explain_figures as figures
    from training.data import load_test_set

    spec = ImageSpec.from_manifest(bundle.preprocessing)
    model = load_torch_bundle(bundle)
    maps = feature_maps(model, spec)
    test = load_test_set(spec, bundle.preprocessing.get("classes"))
    count = min(args.images, len(test.inputs))
    started = time.perf_counter()
    scores = layer_scores(
        Explainer.build(model, spec),
        cam_candidates(model, maps),
        torch.from_numpy(test.inputs[:count]),
    )
    chosen = best_layer(scores)
    for s in scores:
        mark = "  <- default layer" if s.layer == chosen else ""
        say(
            f"grad_cam @ {s.layer} ({s.resolution[0]}x{s.resolution[1]}): deletion AUC "
            f"{s.deletion_auc:.3f}, insertion AUC {s.insertion_auc:.3f}{mark}"
        )
    embed = min(args.embed_images, len(test.inputs))
    views = {
        "gradcam_layers": {"chosen": chosen, "layers": [s.to_dict() for s in scores]},
        "embeddings": figures.projections(
            model, test.inputs[:embed], test.labels[:embed], args.out
        ),
        "activations": figures.activation_histograms(
            model, block_layers(model, maps), test.inputs[:count], args.out
        ),
        "filters": figures.filters(model, args.out),
    }
    e = views["embeddings"]
    say(
        f"embeddings of {embed} held-out digits: silhouette by label "
        f"{e['silhouette_embedding']:.3f} (raw pixels {e['silhouette_pixels']:.3f}), "
        f"PCA 2-D {e['silhouette_pca']:.3f}, "
        f"t-SNE 2-D {e['silhouette_tsne']:.3f}; views in {time.perf_counter() - started:.1f}s"
    )
    (args.out / "model_views.json").write_text(json.dumps(views, indent=2) + "\n")
    return views


def write_outputs(rows: list[Row], out: Path) -> list[dict[str, Any]]:
    """One grid PNG per row, table.md, table.csv and summary.json under `out`."""
    from models import render

    out.mkdir(parents=True, exist_ok=True)
    table = []
    for row in rows:
        stem = row.method + (f"-{row.layer.replace('.', '_')}" if row.layer else "")
        chunks = [row.tiles[i : i + TILES_PER_ROW] for i in range(0, len(row.tiles), TILES_PER_ROW)]
        render.rows([render.panel(chunk, side=96) for chunk in chunks]).save(out / f"{stem}.png")
        table.append({"method": row.method, "layer": row.layer or "-", "images": len(row.ms)})
        table[-1].update(row.means())
    header = ["method", "layer", "images", *COLUMNS, "ms_per_explanation"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    csv = [",".join(header)]
    for entry in table:
        cells = [_cell(entry[h]) for h in header]
        lines.append("| " + " | ".join(cells) + " |")
        csv.append(",".join(cells))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "table.csv").write_text("\n".join(csv) + "\n")
    (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from shared.errors import BundleError, RegistryError
    from shared.registration import use_tracking_server

    registry = use_tracking_server(args.tracking_uri, timeout_s=30, max_retries=3)
    say(f"fetching {args.model_uri} from {args.tracking_uri}")
    try:
        fetched = registry.fetch(args.model_uri, args.cache_dir)
    except (RegistryError, BundleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bundle = fetched.bundle
    started = time.perf_counter()
    rows, arch = explain_rows(args, bundle)
    table = write_outputs(rows, args.out)
    model_views(args, bundle)
    say(f"{arch}, {fetched.name} version {fetched.version}: {time.perf_counter() - started:.0f}s")
    print((args.out / "table.md").read_text(), end="", flush=True)
    if args.no_log:
        say(f"wrote {args.out} (not logged)")
        return 0
    from mlflow.tracking import MlflowClient

    run_id = bundle.manifest.get("source", {}).get("run_id") or fetched.run_id
    if not run_id:
        print("error: the bundle names no source run to log the report to", file=sys.stderr)
        return 2
    client = MlflowClient()
    client.log_artifacts(run_id, str(args.out), artifact_path="explain_report")
    client.set_tag(run_id, "modelplane.explain_report", f"{fetched.name}/{fetched.version}")
    say(
        f"logged {len(table)} rows, {len(rows)} grids and the model views to run {run_id} "
        "under explain_report/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
