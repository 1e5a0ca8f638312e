"""One Locust user class per service; loadtests/locustfile.py picks them by SERVICES."""

import os

#: each service's local port (ARCHITECTURE.md); <SERVICE>_URL overrides it
PORTS = {"classify": 8001, "similarity": 8002, "explain": 8003, "generate": 8004, "text": 8005}


def service_url(service: str) -> str:
    """`<SERVICE>_URL` (e.g. CLASSIFY_URL), else the service's local port."""
    default = f"http://127.0.0.1:{PORTS[service]}"
    return os.environ.get(f"{service.upper()}_URL", default).rstrip("/")
