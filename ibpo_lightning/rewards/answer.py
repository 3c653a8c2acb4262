"""Final-number extraction and the exact numeric reward."""

from __future__ import annotations

import re
from fractions import Fraction

# A number; its minus sign only counts when not glued to a preceding word or digit ("20-13"
# yields 13). Thousands separators ("1,234") and decimals ("12.5") are read; a trailing "." is not.
_NUMBER = re.compile(r"(?:(?<![\w.)])[-\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")
_FRAC = re.compile(r"^\s*(-?)\s*\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}\s*$")
_BOX_OPENERS = ("\\boxed{", "\\fbox{")


def box_end(text: str, start: int) -> int | None:
    """Index of the brace that closes a box whose content starts at ``start`` (braces balanced),
    or None when it is never closed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (balanced braces), or None."""
    starts = [text.rfind(opener) + len(opener) for opener in _BOX_OPENERS if opener in text]
    start = max(starts, default=-1)
    if start < 0:
        return None
    end = box_end(text, start)
    return text[start:end] if end is not None else None


def _number(text: str, last: bool = True) -> str | None:
    """The last (or first) number in ``text``, without commas, or None."""
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    return matches[-1 if last else 0].replace(",", "").replace("\u2212", "-")


def extract_final_number(text: str) -> str | None:
    """The final numeric answer in ``text``, normalised (no commas), or None.

    The last number in a ``\\boxed{...}`` is preferred, then the first number after the last
    ``####``, then the last number anywhere. A boxed ``\\frac{a}{b}`` is returned as ``"a/b"``.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        frac = _FRAC.match(boxed)
        if frac:
            sign, num, den = frac.groups()
            return f"{sign}{num}/{den}"
        number = _number(boxed)
        if number is not None:
            return number
    if "####" in text:
        number = _number(text.rsplit("####", 1)[1], last=False)
        if number is not None:
            return number
    return _number(text)


def _as_fraction(number: str) -> Fraction | None:
    try:
        return Fraction(number)
    except (ValueError, ZeroDivisionError):
        return None


def number_reward(completion: str, answer: str) -> float:
    """1.0 if the completion's final number equals the reference answer numerically, else 0.0."""
    predicted = extract_final_number(completion)
    if predicted is None:
        return 0.0
    reference = _as_fraction(answer.strip().replace(",", ""))
    if reference is None:
        extracted = extract_final_number(answer)
        reference = _as_fraction(extracted) if extracted is not None else None
    value = _as_fraction(predicted)
    return 1.0 if value is not None and reference is not None and value == reference else 0.0


class NumberReward:
    """``reward(completions, answers)``: :func:`number_reward` of each pair (exact match of the
    final number; no worker processes, nothing to close)."""

    def __call__(self, completions: list[str], answers: list[str]) -> list[float]:
        return [number_reward(c, a) for c, a in zip(completions, answers, strict=True)]
