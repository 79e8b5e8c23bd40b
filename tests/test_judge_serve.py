"""The judge scorer against a real ``icv serve`` (the embedded SmolLM2) on loopback, end to end.

The server is ``icv serve``'s app and engine under uvicorn on a thread of this process (as the
serving tests run it), on the session's real model: loading a second copy in a process of its
own took minutes on the loaded CI machine, and tests/test_serving_real.py already checks that the
command starts the same server.

A small forwarding proxy stands between them only to fail the first request with a 503 (so the
retry is exercised) and to count what reaches the server.  SmolLM2-135M is no judge: whatever it
answers, each rating must be the strict parse of its answer, or counted unparsable.
"""

from __future__ import annotations

import json
import math
import threading
import urllib.error
import urllib.request
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from serving_server import BackgroundServer, httpx

from icv.errors import ScorerError
from icv.judge import RATINGS, JudgeScorer, parse_rating
from icv.serving import ModelShape, VectorLibrary
from icv.serving.access import AccessPolicy

pytestmark = pytest.mark.real_model

KEY = "judge-secret"


class FailFirstProxy:
    """Forwards POSTs to ``target``; the first one gets a 503 instead."""

    def __init__(self, target: str) -> None:
        self.forwarded = 0
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    first = proxy.refused == 0
                    proxy.refused += first
                    proxy.forwarded += not first
                if first:
                    return self._send(503, b'{"error": "warming up"}')
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")
                }
                request = urllib.request.Request(
                    target + self.path, data=body, headers=headers, method="POST"
                )
                try:
                    with urllib.request.urlopen(request, timeout=300) as response:
                        self._send(response.status, response.read())
                except urllib.error.HTTPError as error:
                    self._send(error.code, error.read())

            def _send(self, status, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_judge_rates_through_icv_serve_with_a_retry_the_key_and_the_cache(real, tmp_path, monkeypatch):
    model, tok = real
    library = VectorLibrary.load([], ModelShape.of(model))
    server = BackgroundServer(model, tok, library, model_id="judge", access=AccessPolicy(api_key=KEY))
    with server:
        url = server.url
        proxy = FailFirstProxy(url)
        monkeypatch.setenv("ICV_TEST_JUDGE_KEY", KEY)
        options = dict(
            url=proxy.url,
            model="judge",
            api_key_env="ICV_TEST_JUDGE_KEY",
            max_tokens=8,
            timeout=600,
            concurrency=2,
            backoff=0.05,
            cache=tmp_path / "cache",
        )
        outputs = ["Dear Sir, the meal was adequate."]
        sources = ["the food was ok"]
        judged = JudgeScorer("formal English", **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a 135M judge may well answer without a rating
            values = judged.score(outputs, sources)
            ratings = judged.rate(outputs, sources)  # from the cache
        assert proxy.refused == 1 and proxy.forwarded == 3
        assert judged.stats.requests == 4 and judged.stats.retries == 1
        # Each rating is the strict parse of the server's answer, as the cache holds it.
        answers = [json.loads(f.read_text())["answer"] for f in (tmp_path / "cache").rglob("*.json")]
        assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
        parsed = sorted((parse_rating(a) is None, parse_rating(a) or 0) for a in answers)
        got = sorted((getattr(r, k) is None, getattr(r, k) or 0) for r in ratings for k in RATINGS)
        assert parsed == got
        assert judged.stats.unparsable == 2 * sum(getattr(r, k) is None for r in ratings for k in RATINGS)
        for value, rating in zip(values, ratings, strict=True):
            assert (math.isnan(value) and math.isnan(rating.score)) or value == rating.score / 2
        # A re-run: nothing reaches the server.
        again = JudgeScorer("formal English", **options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            repeated = again.score(outputs, sources)
        assert proxy.forwarded == 3 and again.stats.requests == 0
        assert [v if not math.isnan(v) else None for v in repeated] == [
            v if not math.isnan(v) else None for v in values
        ]
        # A wrong key: the server's 401, named, and not retried.
        monkeypatch.setenv("ICV_TEST_JUDGE_KEY", "wrong")
        with pytest.raises(ScorerError, match=r"HTTP 401.*ICV_TEST_JUDGE_KEY"):
            JudgeScorer("formal English", **{**options, "cache": False, "concurrency": 1}).score(
                outputs[:1], sources[:1]
            )
        assert proxy.forwarded == 4
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        proxy.close()
