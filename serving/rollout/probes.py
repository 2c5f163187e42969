"""Golden-set probes: the controller asks champion and canary the same golden questions, and compares.

The questions and the scoring are the offline gate's (``core.golden``, ``core.evaluate``): each
question goes through a gateway replica to both versions, pinned (``X-Model-Version``, so the split's
traffic figures never count it), greedy (temperature 0), with the gate's token budget. A question is
asked once per canary, in a random order, ``probe_rps`` pairs a second, in a thread of its own; the
counts (asked, canary-only wrong, champion-only wrong) are what ``analysis`` judges. A probe that
fails (an error, a timeout) is asked again later and never counts as a wrong answer: errors are
judged on live traffic.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.answers import ROWS_FILE, normalize_answer, read_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GoldenQuestion:
    id: str
    body: bytes  # the chat completion request, ready to send
    answer: str


@dataclass
class ProbeCounts:
    asked: int = 0
    worse: int = 0  # the champion right, the canary wrong
    better: int = 0  # the canary right, the champion wrong
    canary_right: int = 0
    champion_right: int = 0
    failed: int = 0  # probes that got no answer (asked again later)


def load_golden(folder: Path, model: str) -> list[GoldenQuestion]:
    """The golden set at ``folder`` (``golden.jsonl`` and its images) as ready-to-send chat requests.

    No ``max_tokens``: each version answers within its own build's ``MAX_NEW_TOKENS``, as it did for the gate.
    """
    import json

    questions = []
    for row in read_rows(folder / ROWS_FILE):
        image = (folder / str(row["image"])).read_bytes()
        suffix = Path(str(row["image"])).suffix.lower().lstrip(".") or "png"
        url = f"data:image/{'jpeg' if suffix == 'jpg' else suffix};base64,{base64.b64encode(image).decode()}"
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": row["question"]}]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
        }
        questions.append(GoldenQuestion(str(row["id"]), json.dumps(body).encode(), str(row["answer"])))
    return questions


class Prober:
    """Probes one (champion, canary) pair at a time; ``counts()`` is safe to read from the controller's thread."""

    def __init__(
        self,
        questions: Sequence[GoldenQuestion],
        gateways: Sequence[str],
        rate: float,
        *,
        timeout_s: float = 60.0,
        concurrency: int = 4,
    ) -> None:
        self.questions = list(questions)
        self.gateways = [g.rstrip("/") for g in gateways]
        self.rate = rate
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._counts = ProbeCounts()
        self._pair: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pair(self) -> tuple[int, int] | None:
        return self._pair

    def counts(self) -> ProbeCounts:
        with self._lock:
            return ProbeCounts(**vars(self._counts))

    def start(self, champion: int, canary: int) -> None:
        """Begin probing this pair from scratch (a new canary, or a new champion)."""
        self.stop()
        with self._lock:
            self._counts = ProbeCounts()
        self._pair = (champion, canary)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(champion, canary, self._stop), name=f"probes-v{canary}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout_s + 5)
        self._thread, self._pair = None, None

    def _run(self, champion: int, canary: int, stop: threading.Event) -> None:
        order = list(range(len(self.questions)))
        random.Random(canary).shuffle(order)  # a fixed order per canary: a restart asks the same first questions
        pending = list(order)
        interval = 1.0 / self.rate
        with (
            httpx.Client(timeout=self.timeout_s, trust_env=False) as client,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="probe") as pool,
        ):
            in_flight: set[Any] = set()
            next_at = time.monotonic()
            turn = 0
            while (pending or in_flight) and not stop.is_set():
                in_flight = {f for f in in_flight if not f.done()}
                if not pending:
                    stop.wait(0.05)  # a probe in flight may fail and be asked again
                    continue
                if len(in_flight) >= self.concurrency:
                    stop.wait(0.05)
                    continue
                wait = next_at - time.monotonic()
                if wait > 0:
                    stop.wait(wait)
                    continue
                index = pending.pop(0)
                gateway = self.gateways[turn % len(self.gateways)]
                turn += 1
                in_flight.add(pool.submit(self._probe, client, gateway, champion, canary, index, pending, stop))
                next_at += interval
            for future in in_flight:
                future.cancel()

    def _probe(
        self,
        client: httpx.Client,
        gateway: str,
        champion: int,
        canary: int,
        index: int,
        pending: list[int],
        stop: threading.Event,
    ) -> None:
        question = self.questions[index]
        answers = []
        for version in (champion, canary):
            if stop.is_set():
                return
            answer = self._ask(client, gateway, version, question)
            if answer is None:
                with self._lock:
                    self._counts.failed += 1
                pending.append(index)  # asked again later: a failure is not a wrong answer
                return
            answers.append(normalize_answer(answer) == normalize_answer(question.answer))
        champion_right, canary_right = answers
        with self._lock:
            if stop.is_set():
                return
            c = self._counts
            c.asked += 1
            c.champion_right += champion_right
            c.canary_right += canary_right
            c.worse += champion_right and not canary_right
            c.better += canary_right and not champion_right

    def _ask(self, client: httpx.Client, gateway: str, version: int, question: GoldenQuestion) -> str | None:
        try:
            response = client.post(
                f"{gateway}/v1/chat/completions",
                content=question.body,
                headers={
                    "Content-Type": "application/json",
                    "X-Model-Version": str(version),
                    "X-Request-Id": f"probe-v{version}-{question.id}",
                },
            )
        except httpx.HTTPError as exc:
            log.info("probe %s to v%d failed: %s", question.id, version, exc)
            return None
        if response.status_code != 200:
            log.info("probe %s to v%d: %d %s", question.id, version, response.status_code, response.text[:200])
            return None
        try:
            return str(response.json()["choices"][0]["message"]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None
