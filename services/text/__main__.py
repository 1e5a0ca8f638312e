"""python -m services.text --host 127.0.0.1 --port 8005"""

from services.catalog import entry
from shared.serve import limit_math_threads

limit_math_threads()

from services.text.service import TextService  # noqa: E402
from shared.serve import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(
        run(TextService, default_port=entry("text").port, default_grpc_port=entry("text").grpc_port)
    )
