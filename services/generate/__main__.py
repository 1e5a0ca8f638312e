"""python -m services.generate --host 127.0.0.1 --port 8004"""

import os

from shared.serve import limit_math_threads

limit_math_threads()
# One generation at a time with a short queue, and a timeout sized for diffusion on CPU;
# explicit environment values win.
os.environ.setdefault("MAX_BATCH_SIZE", "1")
os.environ.setdefault("MAX_QUEUE", "4")
os.environ.setdefault("REQUEST_TIMEOUT_S", "120")

from services.generate.service import GenerateService, GenerateSettings  # noqa: E402
from shared.serve import run  # noqa: E402


def main() -> int:
    directory = GenerateSettings().pipeline_dir
    if directory is None:
        return run(GenerateService, default_port=8004)
    from services.generate.local import serve_local

    return serve_local(directory, default_port=8004)


if __name__ == "__main__":
    raise SystemExit(main())
