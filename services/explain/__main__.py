"""python -m services.explain --host 127.0.0.1 --port 8003"""

import os

from shared.serve import limit_math_threads

limit_math_threads()
# Explain's defaults differ from the shared ones (explicit environment values win):
# - it explains the classify model, not a model named "explain";
# - an explanation takes up to seconds, so a batch is one item, the queue is short, and a
#   queued request may wait longer before it is shed with a 504;
# - heatmaps come back at the input's size, so inputs are capped at 1024x1024.
os.environ.setdefault("MODEL_URI", "models:/classify@production")
os.environ.setdefault("MAX_BATCH_SIZE", "1")
os.environ.setdefault("MAX_QUEUE", "16")
os.environ.setdefault("REQUEST_TIMEOUT_S", "60")
os.environ.setdefault("MAX_IMAGE_PIXELS", str(1024 * 1024))

from services.explain.service import ExplainService  # noqa: E402
from shared.serve import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run(ExplainService, default_port=8003))
