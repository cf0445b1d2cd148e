"""``eyenet predict`` against an HTTP server on loopback: answers, the key, the API's errors."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from jobs.cli import main
from tests.helpers import free_port

ANSWER = {"device_id": "dev-1", "is_anomaly": True, "anomaly_score": 0.97, "threshold": 0.5,
          "model_version": 3, "timestamp": "2026-12-01T00:00:00Z", "top_features": ["latency"],
          "state": "judged"}


class FakeAPI(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []  # what each request carried, for the assertions

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        FakeAPI.seen.append({"path": self.path, "body": body, "auth": self.headers.get("authorization")})
        if body["device_id"] == "dev-1":
            status, payload = 200, ANSWER
        else:
            status, payload = 404, {"detail": f"no telemetry for device {body['device_id']!r}"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FakeAPI.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_predict_prints_the_answer_and_sends_the_key_from_the_environment(api, monkeypatch, capsys):
    monkeypatch.setenv("EYENET_API_KEY", "k3y")
    assert main(["predict", "dev-1", "--url", api]) == 0
    out = capsys.readouterr().out
    assert "dev-1: ANOMALY score 0.970 (threshold 0.500, judged) top latency; model v3" in out
    assert FakeAPI.seen == [{"path": "/v1/predict", "body": {"device_id": "dev-1"}, "auth": "Bearer k3y"}]
    assert main(["predict", "dev-1", "--url", api, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [ANSWER]


def test_the_apis_error_names_the_device_and_what_the_api_said(api, monkeypatch, capsys):
    monkeypatch.delenv("EYENET_API_KEY", raising=False)
    assert main(["predict", "dev-9", "--url", api]) == 1
    err = capsys.readouterr().err
    assert f"dev-9: {api} answered 404: no telemetry for device 'dev-9'" in err
    assert FakeAPI.seen[0]["auth"] is None


def test_no_api_and_a_bad_url_are_one_line_each(capsys):
    port = free_port()  # nobody listens there
    assert main(["predict", "dev-1", "--url", f"http://127.0.0.1:{port}"]) == 1
    assert "no EyeNet API at" in capsys.readouterr().err
    assert main(["predict", "dev-1", "--url", "ftp://x"]) == 2
    assert "--url must start with http:// or https://, got 'ftp://x'" in capsys.readouterr().err
