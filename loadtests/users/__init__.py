"""One Locust user class per service; loadtests/locustfile.py picks them by SERVICES."""

import os

from services.catalog import SERVICES

#: each service's local port (services/catalog.py); <SERVICE>_URL overrides it
PORTS = {svc.name: svc.port for svc in SERVICES}


def service_url(service: str) -> str:
    """`<SERVICE>_URL` (e.g. CLASSIFY_URL), else the service's local port."""
    default = f"http://127.0.0.1:{PORTS[service]}"
    return os.environ.get(f"{service.upper()}_URL", default).rstrip("/")
