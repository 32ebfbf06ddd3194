"""A real Prometheus server (Debian's ``prometheus``) scraping the gateways a test started.

It runs on a free 127.0.0.1 port with a throwaway data directory, scrapes every
:data:`SCRAPE_INTERVAL`, loads the given rule files, and answers PromQL through its HTTP API
(:meth:`PrometheusServer.query`), the way Grafana and Alertmanager would ask it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from support.gateway import free_port
from support.processes import stop_process, wait_until_serving

__all__ = ["SCRAPE_INTERVAL", "PrometheusServer"]

#: Seconds between two scrapes of each gateway: short, so that rates exist within seconds.
SCRAPE_INTERVAL = 1.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (``host:port``) under the job name ``yektaws``."""

    def __init__(self, targets: list[str], rule_files: list[Path]) -> None:
        if shutil.which("prometheus") is None:
            raise RuntimeError("prometheus is not installed (scripts/test installs it)")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="yektaws-prometheus-"))
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL:g}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL:g}s",
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": "yektaws", "static_configs": [{"targets": targets}]},
            ],
        }
        # JSON is YAML: no YAML library needed to write the configuration.
        self.config = self.directory / "prometheus.yml"
        self.config.write_text(json.dumps(config, indent=2))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = (self.directory / "prometheus.log").open("ab")
        self._process = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until_serving(self._process, self._ready, START_TIMEOUT, self._failed_to_start)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def _failed_to_start(self) -> None:
        self.stop()
        raise RuntimeError(f"prometheus did not start: {self.output()}")

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process, STOP_TIMEOUT)

    def output(self) -> str:
        path = self.directory / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of one HTTP API answer; raises on an error answer (a bad query)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The series an instant query returns now."""
        return self.api("query", query=expr)["result"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``expr`` until it returns at least one series."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(expr)):
            if time.monotonic() > deadline:
                raise AssertionError(f"no series for {expr} within {timeout}s")
            time.sleep(SCRAPE_INTERVAL / 2)
        return result

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
