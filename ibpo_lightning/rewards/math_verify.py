"""Answer checking with the ``math_verify`` package, in worker processes with timeouts.

``math_verify`` times out with ``signal.alarm``, which only works in a process's main thread, so
answers are scored in a process pool. A stuck answer scores 0.0 and the workers are restarted.
"""

from __future__ import annotations

import math
import multiprocessing
import re
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from ibpo_lightning.rewards.answer import box_end

_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_START_TIMEOUT_S = 120.0
# 8.7e8, 3E-6: a number in e-notation (not part of a word or another number)
_E_NOTATION = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
# "4 A", "3 i", "i t", "} x": a factor spaced from a one-letter factor, which the parser reads
# as two terms (or drops); the left one a digit, a lone letter (not the end of a command such as
# \sin) or a closing brace
_SPACED_FACTOR = re.compile(r"(\d|(?<![\\A-Za-z])[A-Za-z]|\})\s+([A-Za-z])(?![A-Za-z])")
# "-3./2": a number written with a trailing point
_TRAILING_POINT = re.compile(r"(?<=\d)\.(?!\d)")
# "1950^\circ C", "45^{\circ}", "30°": a degree sign, with a temperature scale after it
_DEGREES = re.compile(r"\s*(?:\^\s*\{?\s*\\circ\s*\}?|°)\s*"
                      r"(?:\\mathrm\{\s*[CFK]\s*\}|\\text\{\s*[CFK]\s*\}|[CFK](?![A-Za-z]))?")
# "0.003^{\prime \prime}", "y^{\prime}": primes as apostrophes
_PRIMES = re.compile(r"\^\s*\{((?:\s*\\prime)+)\s*\}|\^\s*\\prime")
# "E_{1}": a one-character subscript in braces, as "E_1"
_SUBSCRIPT = re.compile(r"_\{\s*([A-Za-z0-9])\s*\}")
_COMMA_SPACE = re.compile(r",\s+")


def normalise_notation(text: str) -> str:
    r"""Rewrite notations ``math_verify`` misreads into ones it reads: e-notation as
    ``a\times10^{k}``; a factor spaced from a one-letter factor written together (``4 A``,
    ``i t``); a trailing decimal point dropped (``-3./2``); degree signs dropped, with the
    temperature scale after them (``1950^\circ C`` is 1950); primes as apostrophes
    (``0.003^{\prime\prime}`` is ``0.003''``); one-character subscripts without braces
    (``E_{1}`` is ``E_1``) and no space after commas (lists it compares as text)."""
    text = _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{int(m.group(2))}}}", text)
    text = _TRAILING_POINT.sub("", text)
    text = _DEGREES.sub("", text)
    text = _PRIMES.sub(lambda m: "'" * max(1, (m.group(1) or "").count("\\prime")), text)
    text = _SUBSCRIPT.sub(r"_\1", text)
    text = _COMMA_SPACE.sub(",", text)
    for _ in range(2):  # "i t u": overlapping pairs take two passes
        text = _SPACED_FACTOR.sub(r"\1\2", text)
    return text


def _normalise_boxed(text: str) -> str:
    """``normalise_notation`` applied to the content of every ``\\boxed{...}`` of ``text``."""
    out, start = [], 0
    while (open_at := text.find("\\boxed{", start)) >= 0:
        i = open_at + len("\\boxed{")
        end = box_end(text, i)
        if end is None:  # unbalanced: leave the rest as it is
            break
        out.append(text[start:i] + normalise_notation(text[i:end]))
        start = end
    return "".join(out) + text[start:]


def _reference_text(answer: str) -> str:
    """A reference answer in a form ``math_verify.parse`` reads: boxed unless it already is."""
    text = answer.strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    if "\\boxed" in text:
        return _normalise_boxed(text)
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    return f"\\boxed{{{normalise_notation(text)}}}"


def _completion_text(completion: str) -> str:
    """The part of a completion to parse: all of it, or the ``#### x`` line when not boxed."""
    if "\\boxed" in completion or "\\fbox" in completion or "####" not in completion:
        return _normalise_boxed(completion)
    tail = completion.rsplit("####", 1)[1].strip()
    first_line = tail.splitlines()[0] if tail else ""
    # Unboxed on purpose: parse("18 dollars") finds 18, parse("\\boxed{18 dollars}") a product.
    return _THOUSANDS_COMMA.sub("", first_line)


def _import_math_verify() -> None:
    import math_verify  # noqa: F401  (warm the worker: the import takes seconds)


def _ready() -> bool:
    return True


def _score_one(completion: str, answer: str, step_timeout_s: int) -> float:
    """Score one completion; runs in a worker process's main thread."""
    from math_verify import parse, verify

    gold = parse(_reference_text(answer), parsing_timeout=step_timeout_s)
    if not gold:
        return 0.0
    predicted = parse(_completion_text(completion), parsing_timeout=step_timeout_s)
    if not predicted:
        return 0.0
    return 1.0 if verify(gold, predicted, timeout_seconds=step_timeout_s) else 0.0


class MathVerifyReward:
    """Checks final answers (GSM8K ``#### 72`` or MATH ``\\boxed{...}``) with ``math_verify``.

    Call it as ``reward(completions, answers) -> list[float]``. Reference answers may be plain
    (``"72"``, ``"\\frac{1}{2}"``), GSM8K solutions ending in ``#### 72``, or boxed. The worker
    pool starts on first use; ``close()`` stops it. An answer that fails, crashes its worker or
    runs past its time scores 0.0; the workers are then restarted and the rest go on.

    Args:
        num_workers: Worker processes that score answers in parallel.
        timeout_s: Seconds each step of checking one answer (parsing the reference, parsing the
            completion, comparing) may take. An answer still unscored ``3 * timeout_s + 1``
            seconds after it started (stuck where the step timeouts cannot interrupt it) scores 0.0.
    """

    def __init__(self, num_workers: int = 2, timeout_s: float = 5.0) -> None:
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None

    @property
    def _step_timeout_s(self) -> int:
        return max(1, math.ceil(self.timeout_s))

    @property
    def _item_timeout_s(self) -> float:
        return 3 * self._step_timeout_s + 1.0

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            pool = ProcessPoolExecutor(
                max_workers=self.num_workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_import_math_verify,
            )
            warmups = [pool.submit(_ready) for _ in range(self.num_workers)]
            _, not_done = wait(warmups, timeout=_START_TIMEOUT_S)
            if not_done or any(f.exception() is not None for f in warmups):
                _kill(pool)
                raise RuntimeError("math_verify worker processes failed to start")
            self._pool = pool
        return self._pool

    def _restart(self) -> None:
        if self._pool is not None:
            _kill(self._pool)
            self._pool = None

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        """Score each completion against the reference answer at the same index."""
        if len(completions) != len(answers):
            raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
        scores = [0.0] * len(completions)
        pending = deque(range(len(completions)))
        running: dict[Future, tuple[int, float]] = {}
        requeued: set[int] = set()
        while pending or running:
            pool = self._get_pool()
            # Only as many items in flight as workers, so each starts when submitted.
            while pending and len(running) < self.num_workers:
                try:
                    i = pending[0]
                    args = (completions[i], answers[i], self._step_timeout_s)
                    future = pool.submit(_score_one, *args)
                except BrokenProcessPool:  # a worker died while idle
                    break
                running[future] = (pending.popleft(), time.monotonic() + self._item_timeout_s)
            if not running:
                self._restart()
                continue
            first_deadline = min(deadline for _, deadline in running.values())
            remaining = max(0.0, first_deadline - time.monotonic())
            done, _ = wait(running, timeout=remaining, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                i, _ = running.pop(future)
                try:
                    scores[i] = float(future.result())
                except BrokenProcessPool:
                    broken = True  # a worker died; its item (unknown which) scores 0.0
                except Exception:
                    scores[i] = 0.0
            now = time.monotonic()
            expired = [f for f, (_, deadline) in running.items() if deadline <= now]
            if broken or expired:
                for future in expired:
                    running.pop(future)
                # Items cut off by the restart are probably innocent: run them again, once.
                again = sorted((i for i, _ in running.values() if i not in requeued), reverse=True)
                requeued.update(again)
                pending.extendleft(again)
                running.clear()
                self._restart()
        return scores

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = None
        return state

    def __del__(self) -> None:
        try:
            self._restart()
        except Exception:
            pass


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose workers may be stuck: terminate them rather than wait."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)
