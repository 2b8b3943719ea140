"""The paraphrase rule of question files: no run of 4+ consecutive words copied from the passage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.rag.evaluation import load_questions, normalize, paraphrase_violations
from tasks.rag.paraphrase import copied_runs, violations

ROOT = Path(__file__).resolve().parents[2]
QUESTION_FILES = sorted([*ROOT.glob("benchmarks/qa/heldout/*.jsonl"), *ROOT.glob("tests/data/rag_eval/*.jsonl")])

PASSAGE = "Helsinki is the capital of Finland, and Finnish and Swedish are its official languages."


def test_copied_runs_finds_the_longest_run_ignoring_case_and_punctuation():
    assert copied_runs("What is THE capital of Finland, today?", PASSAGE) == ["is the capital of finland"]
    assert copied_runs("Which city governs the Finns?", PASSAGE) == []
    # three words in a row are allowed; two separate copied runs are both reported
    assert copied_runs("the capital of which land?", PASSAGE) == []
    assert copied_runs("Is the capital of Finland a port, as Swedish are its official languages?", PASSAGE) == [
        "is the capital of finland",
        "swedish are its official languages",
    ]


def test_ligatures_do_not_hide_a_copy():
    assert violations("q7", "What does the ﬁnal section say?", "In the final section say nothing.") == [
        "q7: copies 4 consecutive words from its passage: 'the final section say'"
    ]


@pytest.mark.parametrize("path", QUESTION_FILES, ids=lambda p: p.name)
def test_committed_question_files_are_paraphrases_whose_answers_are_in_their_passages(path):
    questions, errors = load_questions(str(path))
    assert errors == [] and len(questions) >= 6
    assert all(q.passage and q.page for q in questions)
    assert paraphrase_violations(questions) == []
    for q in questions:  # the answer must be findable in the passage the question paraphrases
        assert any(normalize(a) in normalize(q.passage) for a in q.answers), q.id


def test_a_file_that_copies_its_passage_is_reported(tmp_path):
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"id": "copied", "question": "What is the capital of Finland?", "answers": ["Helsinki"], "passage": PASSAGE},
        {"id": "own-words", "question": "Which city governs the Finns?", "answers": ["Helsinki"], "passage": PASSAGE},
        {"id": "bad-passage", "question": "Where?", "answers": ["x"], "passage": ""},
    ]
    qa.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    questions, errors = load_questions(str(qa))
    assert errors == [f"{qa}:3: 'passage' must be a non-empty string"]
    assert paraphrase_violations(questions) == [
        "copied: copies 5 consecutive words from its passage: 'is the capital of finland'"
    ]
