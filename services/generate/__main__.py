"""python -m services.generate --host 127.0.0.1 --port 8004"""

from shared.serve import limit_math_threads

limit_math_threads()

from services.generate.service import GenerateService, GenerateSettings  # noqa: E402
from shared.serve import run  # noqa: E402


def main() -> int:
    directory = GenerateSettings().pipeline_dir
    if directory is None:
        return run(GenerateService, default_port=8004)
    from services.generate.local import create_local_app

    return run(GenerateService, 8004, build_app=lambda s: create_local_app(s, directory))


if __name__ == "__main__":
    raise SystemExit(main())
