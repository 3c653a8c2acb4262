"""IBPO's repair prompts: what the policy is shown to repair a wrong attempt.

A prompt is built from two choices. The instruction (``whole``: rewrite attempt A minimally;
``line``: find its first wrong line, keep the lines before it, rewrite from there) and the
reference (``sibling``: another sample of the same group, "attempt B", as in the IBPO paper;
``solution``: the task's worked solution, ``Problem.solution``; ``both``: the two together).
Showing a worked solution instead of, or beside, a sibling follows InT (arXiv 2601.14209), where a
reference solution guides the correction of a failed attempt; the wording here is this project's.

A template of one's own is a ``str.format`` string with ``{problem}`` and ``{attempt}``, plus
``{reference}`` (the sibling's text) for ``sibling`` and ``both`` and ``{solution}`` for
``solution`` and ``both``.
"""

from __future__ import annotations

REFERENCES = ("sibling", "solution", "both")
"""What a repair prompt shows beside the wrong attempt."""

_SHOWN = {"sibling": "Attempt B:\n{reference}", "solution": "A worked solution:\n{solution}",
          "both": "Attempt B:\n{reference}\n\nA worked solution:\n{solution}"}
_NAMED = {"sibling": "attempt B", "solution": "the worked solution", "both": "attempt B and the worked solution"}
_ASK = {
    "whole": "Attempt A may contain a mistake. Compare it with {named}, then write attempt A again, "
             "changing only what is needed to make it correct.",
    "line": "Attempt A may contain a mistake. Compare it with {named} line by line and find the first line "
            "of attempt A that is wrong. Then write attempt A again: copy every line before that one unchanged, "
            "and rewrite attempt A from that line on so that it is correct.",
}


def repair_template(prompt: str, reference: str = "sibling") -> str:
    """The template of instruction ``prompt`` (a name of :data:`INSTRUCTIONS` or a template of
    one's own, checked for the fields ``reference`` needs) with ``reference`` shown."""
    if reference not in REFERENCES:
        raise ValueError(f"estimator.reference must be one of {list(REFERENCES)}, got {reference!r}")
    if prompt in _ASK:
        ask = _ASK[prompt].replace("{named}", _NAMED[reference])
        return "{problem}\n\nAttempt A:\n{attempt}\n\n" + _SHOWN[reference] + "\n\n" + ask
    fields = ["problem", "attempt"] + (["reference"] if reference != "solution" else []) + (
        ["solution"] if reference != "sibling" else [])
    for name in fields:
        if "{" + name + "}" not in prompt:
            raise ValueError(f"estimator.repair_prompt must be one of {sorted(INSTRUCTIONS)} or a template "
                             f"containing {', '.join('{' + f + '}' for f in fields)} (estimator.reference: {reference})")
    return prompt


INSTRUCTIONS = tuple(_ASK)
"""The named instructions ``repair_prompt`` accepts."""
REPAIR_PROMPT = repair_template("whole")
LINE_REPAIR_PROMPT = repair_template("line")
