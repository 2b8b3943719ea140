"""The paraphrase rule of a question file: a question copies no run of 4 or more consecutive words
from the passage that answers it, so retrieval is scored on questions in a reader's own words
rather than on phrases it can match verbatim.

Words are compared case-folded, ligatures unfolded, punctuation ignored; the answer itself may be
named (a question rarely needs to), but not inside a copied run either.
"""

from __future__ import annotations

import re
import unicodedata

MAX_COPIED_WORDS = 3  # a run of 4 or more words shared with the passage breaks the rule

WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def copied_runs(question: str, passage: str, longest_allowed: int = MAX_COPIED_WORDS) -> list[str]:
    """The longest runs of the question's words that also occur consecutively in the passage and are
    longer than `longest_allowed` words; empty when the question is a paraphrase."""
    asked, source = words(question), words(passage)
    size = longest_allowed + 1
    shingles = {tuple(source[i : i + size]) for i in range(len(source) - size + 1)}
    runs, start = [], 0
    while start <= len(asked) - size:
        if tuple(asked[start : start + size]) not in shingles:
            start += 1
            continue
        end = start + size  # grow the run while every window of `size` words is still in the passage
        while end < len(asked) and tuple(asked[end - size + 1 : end + 1]) in shingles:
            end += 1
        runs.append(" ".join(asked[start:end]))
        start = end
    return runs


def violations(question_id: str, question: str, passage: str) -> list[str]:
    """One message per copied run, naming the question."""
    return [
        f"{question_id}: copies {len(run.split())} consecutive words from its passage: {run!r}"
        for run in copied_runs(question, passage)
    ]
