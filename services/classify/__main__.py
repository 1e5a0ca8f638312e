"""python -m services.classify --host 127.0.0.1 --port 8001"""

from services.catalog import entry
from shared.serve import limit_math_threads

limit_math_threads()

from services.classify.service import ClassifyService  # noqa: E402
from shared.serve import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(
        run(
            ClassifyService,
            default_port=entry("classify").port,
            default_grpc_port=entry("classify").grpc_port,
        )
    )
