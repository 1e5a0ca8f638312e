"""python -m services.generate --host 127.0.0.1 --port 8004"""

from services.catalog import entry
from shared.serve import limit_math_threads

limit_math_threads()

from services.generate.service import GenerateService  # noqa: E402
from shared.serve import run  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(run(GenerateService, default_port=entry("generate").port))
