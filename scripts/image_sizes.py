"""python -m scripts.image_sizes: each image's Python environment, installed and measured here.

Images cannot be built on this machine, so each image's extras go into a fresh virtualenv the
way docker/Dockerfile installs them; the script prints the installed size of each and writes
docker/constraints-<image>.txt (the exact versions, which the Dockerfile installs against).
PyTorch here comes from PyPI with its CUDA libraries; the images use the CPU wheels, so the
torch rows also show the size without the `nvidia-*`/`triton` packages and torch's CUDA
kernels (libtorch_cuda*, libc10_cuda*) — an estimate of the CPU-wheel image.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES: dict[str, list[str]] = {
    "serve-onnx": [f"{ROOT}[serve,similarity]"],
    "serve-torch": [f"{ROOT}[explain,generate,text]"],
    "train": [f"{ROOT}[train,generate]"],
    "mlflow": ["mlflow", "psycopg2-binary", "prometheus-flask-exporter"],
}
CUDA_PARTS = ("nvidia", "triton", "libtorch_cuda", "libc10_cuda", "libcudnn", "libnccl")


def size_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def cuda_bytes(site: Path) -> int:
    """Bytes of the CUDA runtime packages and torch's CUDA libraries in `site`."""
    return sum(
        f.stat().st_size
        for f in site.rglob("*")
        if f.is_file() and not f.is_symlink() and any(p in str(f) for p in CUDA_PARTS)
    )


def install(image: str, requirements: list[str], into: Path) -> tuple[int, int]:
    """A fresh venv with `requirements`; (total bytes, CUDA bytes); writes the constraints."""
    print(f"==> {image}: creating a venv and installing {' '.join(requirements)}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(into)], check=True)
    pip = [str(into / "bin" / "python"), "-m", "pip"]
    subprocess.run([*pip, "install", "--progress-bar", "on", *requirements], check=True)
    frozen = subprocess.run(
        [*pip, "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    pins = [line for line in frozen if not line.lower().startswith("modelplane")]
    header = f"# pinned by `make image-sizes` from a fresh install of {' '.join(requirements)}\n"
    (ROOT / "docker" / f"constraints-{image}.txt").write_text(header + "\n".join(pins) + "\n")
    site = next((into / "lib").glob("python*/site-packages"))
    return size_bytes(into), cuda_bytes(site)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.image_sizes", description=__doc__)
    p.add_argument("images", nargs="*", default=list(IMAGES), help=f"of {', '.join(IMAGES)}")
    args = p.parse_args(argv)
    unknown = set(args.images) - set(IMAGES)
    if unknown:
        p.error(f"unknown image(s) {sorted(unknown)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="modelplane-images-") as tmp:
        for image in args.images:
            venv = Path(tmp) / image
            total, cuda = install(image, IMAGES[image], venv)
            rows.append((image, total, cuda))
            shutil.rmtree(venv)
    print("\n| image | Python environment | without CUDA libraries |\n|---|---|---|")
    for image, total, cuda in rows:
        print(f"| {image} | {total / 2**20:,.0f} MiB | {(total - cuda) / 2**20:,.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
