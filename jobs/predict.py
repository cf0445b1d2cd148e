"""``eyenet predict DEVICE [DEVICE ...]``: ask the running API about devices' live windows.

One ``POST /v1/predict`` per device against ``--url`` (default: the config's
``serve.host:serve.port``), with ``Authorization: Bearer $EYENET_API_KEY`` when that is set
(a key is never a flag: flags end up in shell histories and process lists). An API that
is not there, refuses the key or answers 4xx is one line naming the device, the URL and
what the API said.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from eyenet.config import EyeNetConfig
from eyenet.errors import EyeNetError
from jobs.options import PredictOptions, job_main


def predict(url: str, device_id: str, timeout_s: float, api_key: str | None = None) -> dict[str, Any]:
    """The API's prediction for one device."""
    headers = {"content-type": "application/json",
               **({"authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(f"{url.rstrip('/')}/v1/predict",
                                     json.dumps({"device_id": device_id}).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise EyeNetError(f"{device_id}: {url} answered {exc.code}: {_detail(exc)}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EyeNetError(f"no EyeNet API at {url} ({reason}); start one with `eyenet serve` "
                          "or `python -m jobs.deploy`, or give --url") from exc


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        return exc.reason
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else json.dumps(detail)


def main(config: EyeNetConfig, options: PredictOptions) -> int:
    url = options.url or f"http://{config.serve.host}:{config.serve.port}"
    key = os.environ.get("EYENET_API_KEY") or None
    answers = [predict(url, device, options.timeout_s, key) for device in options.devices]
    if options.json:
        print(json.dumps(answers))
        return 0
    for a in answers:
        flag = "ANOMALY" if a["is_anomaly"] else "normal"
        print(f"{a['device_id']}: {flag} score {a['anomaly_score']:.3f} (threshold {a['threshold']:.3f}, "
              f"{a.get('state', 'judged')}) top {', '.join(a['top_features']) or '-'}; "
              f"model v{a['model_version']} at {a['timestamp']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(job_main(PredictOptions, main, prog="python -m jobs.predict", description=__doc__))
