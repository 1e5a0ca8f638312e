#!/usr/bin/env bash
# docker/wheelhouse.sh [IMAGE...]: every wheel the images install, pinned by
# docker/constraints-<image>.txt, fetched on this host into build/docker/wheelhouse/ (never
# committed), so that `docker build` installs with `--no-index --find-links` (the way air-gapped
# sites build): pip inside a build cannot always reach or verify the package index, the host can.
# Packages published only as sources are built into wheels here. Re-running fetches only what is
# missing. IMAGE: serve-onnx, serve-torch, train, mlflow (default: all).
#
#   docker/wheelhouse.sh serve-onnx
#   python3 -m http.server --bind 127.0.0.1 8470 --directory build/docker/wheelhouse &
#   docker build --network host --build-arg PIP_SOURCE="--no-index --find-links http://127.0.0.1:8470/" ...
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELHOUSE=${WHEELHOUSE:-build/docker/wheelhouse}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
IMAGES=("$@")
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=(serve-onnx serve-torch train mlflow)
mkdir -p "$WHEELHOUSE"

# The project's own build backend: `pip install .` with --no-index builds it from the wheelhouse.
echo "==> wheelhouse: setuptools, wheel (the project's build backend)"
"$PYTHON" -m pip wheel --quiet --prefer-binary --wheel-dir "$WHEELHOUSE" "setuptools>=69" wheel

for image in "${IMAGES[@]}"; do
    pins=docker/constraints-$image.txt
    [[ -f $pins ]] || { echo "no $pins (images: serve-onnx serve-torch train mlflow)" >&2; exit 2; }
    started=$SECONDS
    echo "==> wheelhouse: $image ($(grep -cv '^#' "$pins") pinned packages; torch images fetch GBs)"
    # --no-deps: the pins are the whole environment (a freeze), nothing else is resolved.
    "$PYTHON" -m pip wheel --progress-bar off --prefer-binary --no-deps \
        --wheel-dir "$WHEELHOUSE" -r "$pins" 2> >(grep -v 'is ignored: it is neither' >&2) \
        | grep --line-buffered -E '^(Saved|Building|Collecting|ERROR)' \
        | awk '{print "    " $0}' | awk 'NR % 20 == 1 || /ERROR|Building/'
    echo "    $image done in $((SECONDS - started)) s"
done
echo "==> wheelhouse $WHEELHOUSE: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels," \
    "$(du -sh "$WHEELHOUSE" | cut -f1)"
