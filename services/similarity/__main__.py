"""python -m services.similarity --host 127.0.0.1 --port 8002"""

from services.catalog import entry
from shared.serve import limit_math_threads

limit_math_threads()

from services.similarity.service import SimilarityService  # noqa: E402
from shared.serve import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(
        run(
            SimilarityService,
            default_port=entry("similarity").port,
            default_grpc_port=entry("similarity").grpc_port,
        )
    )
