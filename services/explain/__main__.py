"""python -m services.explain --host 127.0.0.1 --port 8003"""

from services.catalog import entry
from shared.serve import limit_math_threads

limit_math_threads()

from services.explain.service import ExplainService  # noqa: E402
from shared.serve import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run(ExplainService, default_port=entry("explain").port))
