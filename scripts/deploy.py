"""python -m scripts.deploy: rewrite every file derived from services/catalog.py.

k8s/base/<name>.yaml whole (scripts/k8s.py); in the hand-written files, only the regions between
a `>>> <region>:` and a `<<< <region>` marker line: docker-compose.yml's service blocks and
cache volumes, docker-compose.host.yml's host names and service blocks,
observability/prometheus.yml's scrape targets, the Makefile's serve-* targets and README.md's
services table. tests/unit/test_catalog.py fails when a committed file differs from
what this writes (`make deploy-files`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from scripts import k8s
from services.catalog import SERVICES, ServiceEntry

ROOT = Path(__file__).resolve().parents[1]
CACHE = k8s.CACHE


def compose_services() -> str:
    """One compose service per row; the first service of each image also builds it."""
    blocks, built = [], set()
    for svc in SERVICES:
        lines = [f"  {svc.name}:", "    <<: *service"]
        if svc.image not in built:
            built.add(svc.image)
            lines.append(
                f"    build: {{context: ., dockerfile: docker/Dockerfile, target: {svc.image}}}"
            )
        lines += [
            f"    image: {k8s.image(svc.image)}",
            f'    command: ["modelplane", "serve", "{svc.name}"]',
            f'    environment: {{<<: *service-env, PORT: "{svc.port}"}}',
            f"    ports: [{compose_ports(svc)}]",
            f'    volumes: ["cache-{svc.name}:{CACHE}"]',
        ]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def compose_ports(svc: ServiceEntry) -> str:
    """HTTP, and gRPC for tensor models, published on loopback only."""
    ports = [svc.port, *([svc.grpc_port] if svc.grpc_port else [])]
    return ", ".join(f'"127.0.0.1:{p}:{p}"' for p in ports)


def compose_volumes() -> str:
    return "".join(f"  cache-{svc.name}:\n" for svc in SERVICES)


def host_names() -> str:
    """docker-compose.host.yml: each service's name resolves to loopback (extra_hosts)."""
    return "".join(f"    - {svc.name}:127.0.0.1\n" for svc in SERVICES)


def host_services() -> str:
    """docker-compose.host.yml: each service on the host network, bound to loopback."""
    return "\n".join(
        f"  {svc.name}:\n    <<: *host\n    environment: {{<<: *registry, HOST: 127.0.0.1}}\n"
        for svc in SERVICES
    )


def scrape_targets() -> str:
    return "".join(
        f'      - targets: ["{svc.name}:{svc.port}"]\n        labels: {{service: {svc.name}}}\n'
        for svc in SERVICES
    )


def serve_help(svc: ServiceEntry) -> str:
    """The `make help` line of serve-<name>."""
    return f"{svc.summary}: {' + '.join(svc.models)} @production on 127.0.0.1:{svc.port}"


def make_serve_targets() -> str:
    targets = " ".join(f"serve-{svc.name}" for svc in SERVICES)
    rules = "\n".join(
        f"serve-{svc.name}: setup  ## {serve_help(svc)}\n\t$(MP) serve {svc.name}\n"
        for svc in SERVICES
    )
    return f".PHONY: {targets}\n{rules}"


def routes(svc: ServiceEntry) -> str:
    """The task routes a service declares (imports it), e.g. `POST /v1/classify`."""
    endpoints = svc.service_class().endpoints
    return ", ".join(f"`{e.method} {e.path}`" for e in endpoints)


def readme_table() -> str:
    rows = [
        "| service | port | serves (`@production`) | task routes | what |",
        "|---|---|---|---|---|",
    ]
    for svc in SERVICES:
        models = ", ".join(f"`{m}`" for m in svc.models)
        rows.append(f"| `{svc.name}` | {svc.port} | {models} | {routes(svc)} | {svc.summary} |")
    return "\n".join(rows) + "\n"


#: file -> region -> its body
REGIONS: dict[str, dict[str, Callable[[], str]]] = {
    "docker-compose.yml": {"services": compose_services, "volumes": compose_volumes},
    "docker-compose.host.yml": {"hosts": host_names, "services": host_services},
    "observability/prometheus.yml": {"targets": scrape_targets},
    "Makefile": {"serve": make_serve_targets},
    "README.md": {"services": readme_table},
}


def splice(text: str, region: str, body: str) -> str:
    """`text` with the lines between its one `>>> region:` and `<<< region` marker lines
    replaced by `body`."""
    pattern = re.compile(
        rf"(^[^\n]*>>> {re.escape(region)}:[^\n]*\n)(.*?)(^[^\n]*<<< {re.escape(region)}\b)",
        flags=re.MULTILINE | re.DOTALL,
    )
    found = len(pattern.findall(text))
    if found != 1:
        raise ValueError(f"{found} '>>> {region}:' ... '<<< {region}' regions, expected one")
    return pattern.sub(lambda m: m.group(1) + body + m.group(3), text)


def derived_files() -> dict[Path, str]:
    """Every derived file's content as the catalog has it now (nothing is written)."""
    files = {k8s.BASE / name: k8s.render(docs) for name, docs in k8s.service_files().items()}
    for name, regions in REGIONS.items():
        text = (ROOT / name).read_text()
        for region, body in regions.items():
            try:
                text = splice(text, region, body())
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
        files[ROOT / name] = text
    return files


def main() -> int:
    for path, text in derived_files().items():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
