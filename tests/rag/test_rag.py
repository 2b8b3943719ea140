"""Retrieval, answers with citations (local model and Ollama over HTTP), rag-query and rag-eval flows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.core.config import load_config
from tasks.rag import answer, retrieval
from tasks.rag.config import RagConfig
from tasks.rag.prompts import PROMPTS
from tasks.rag.retrieval import RagError
from tests.doubles.ollama_server import OllamaServer
from tests.support.rag import pdf_folder

RAG_CONFIG = "configs/rag.yaml"


@pytest.fixture(scope="module")
def indexed(prefect_harness, sample_data, tmp_path_factory):
    """The small real PDFs indexed once (default embeddings, Milvus Lite) for this module."""
    from flows.pdf_index import pdf_index

    folder = tmp_path_factory.mktemp("rag-index")
    docs = pdf_folder(
        sample_data, folder / "docs", ["multicolumn.pdf", "google-doc-document.pdf", "crazyones-pdfa.pdf"]
    )
    overrides = [f"store.uri={folder / 'index.db'}"]
    pdf_index(config="configs/pdf_index.yaml", overrides=overrides, sources=[str(docs)])
    return overrides


def config_for(indexed, *more: str) -> RagConfig:
    return load_config(RagConfig, RAG_CONFIG, indexed + list(more))


def test_hybrid_retrieval_finds_the_page_with_the_answer(indexed):
    sources = retrieval.retrieve("What is the capital of Finland?", config_for(indexed), k=5)
    assert len(sources) == 5
    assert all(set(s) == {"source", "page", "chunk_id", "score", "text"} for s in sources)
    assert sources[0]["source"].endswith("multicolumn.pdf") and sources[0]["page"] == 3
    assert "Helsinki" in sources[0]["text"]
    assert [s["score"] for s in sources] == sorted((s["score"] for s in sources), reverse=True)


@pytest.mark.parametrize("mode, search", [("vector", "similarity"), ("vector", "mmr"), ("keyword", "similarity")])
def test_each_retriever_alone(indexed, mode, search):
    config = config_for(indexed, f"retrieval.mode={mode}", f"retrieval.search={search}")
    sources = retrieval.retrieve("Which text says errors should never pass silently?", config, k=3)
    assert len(sources) == 3 and len({s["chunk_id"] for s in sources}) == 3
    assert any("Errors should never pass silently" in s["text"] for s in sources)


def test_an_empty_index_is_a_clear_error(tmp_path):
    config = load_config(RagConfig, RAG_CONFIG, [f"store.uri={tmp_path / 'empty.db'}"])
    with pytest.raises(RagError, match="holds no documents yet: run python -m flows.pdf_index"):
        retrieval.retrieve("anything?", config)


def test_citations_are_added_when_the_model_gives_none():
    sources = [{"source": "/d/a.pdf", "page": 3}, {"source": "/d/a.pdf", "page": 3}, {"source": "/d/b.pdf", "page": 1}]
    assert answer.with_citations("Paris.", sources) == "Paris.\n\nSources: [a.pdf p.3] [b.pdf p.1]"
    assert answer.with_citations("Paris [a.pdf p.3].", sources) == "Paris [a.pdf p.3]."
    assert answer.with_citations(answer.NOT_IN_CONTEXT, sources) == answer.NOT_IN_CONTEXT


def test_cite_prompt_heads_every_passage_with_its_citation():
    sources = [{"source": "/d/a.pdf", "page": 2, "text": "The sky is green."}]
    prompt = PROMPTS["cite"]
    messages = answer.make_prompt(prompt).format_messages(
        context=answer.format_context(sources, prompt.headed), question="Sky?"
    )
    system = messages[0].text
    assert (
        "only the context" in system
        and answer.NOT_IN_CONTEXT in system
        and "(1) [a.pdf p.2]\nThe sky is green." in system
    )
    assert messages[1].text == "Sky?"


def test_extract_prompt_puts_the_best_passages_right_before_the_question():
    sources = [{"source": "/d/a.pdf", "page": p, "text": f"Passage {p}."} for p in (1, 2, 3)]
    prompt = PROMPTS["extract"]
    given = sources[: prompt.passages]
    messages = answer.make_prompt(prompt).format_messages(
        context=answer.format_context(given, prompt.headed), question="Sky?"
    )
    assert "copied word for word" in messages[0].text and answer.NOT_IN_CONTEXT in messages[0].text
    assert messages[1].text == "Context:\nPassage 1.\n\nPassage 2.\n\nQuestion: Sky?"


def test_answer_with_the_local_model(indexed, tiny_model_dir):
    config = config_for(indexed, f"llm.model={tiny_model_dir}", "llm.max_new_tokens=8")
    # k=1: the tiny test model's context (1,024 tokens of a byte-level vocabulary) holds one chunk.
    result = answer.answer_question("What is the capital of Finland?", config, k=1)
    assert len(result["sources"]) == 1
    assert "[multicolumn.pdf p.3]" in result["answer"]


def test_rag_query_cli_json(indexed, tiny_model_dir, capsys):
    from flows.rag_query import main

    args = ["What is the capital of Finland?", "--k", "1", "--json"]
    for item in indexed + [f"llm.model={tiny_model_dir}", "llm.max_new_tokens=8"]:
        args += ["--set", item]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"answer", "sources"} and len(result["sources"]) == 1
    assert re.search(r"\[multicolumn\.pdf p\.3\]", result["answer"])


def test_rag_query_through_ollama_over_http(indexed, ollama_server):
    config = config_for(
        indexed,
        "llm.provider=ollama",
        f"llm.model={OllamaServer.CHAT_MODEL}",
        f"llm.base_url={ollama_server.url}",
        "llm.max_new_tokens=48",
    )
    result = answer.answer_question("What is the capital of Finland?", config, k=3)
    assert result["answer"].strip()
    assert "[multicolumn.pdf p.3]" in result["answer"]  # cited by the model or appended from the sources


def test_index_and_retrieve_with_ollama_embeddings(prefect_harness, sample_data, tmp_path, ollama_server):
    from flows.pdf_index import pdf_index

    docs = pdf_folder(sample_data, tmp_path / "docs", ["multicolumn.pdf", "crazyones-pdfa.pdf"])
    embed = ["embeddings.provider=ollama", "embeddings.model=all-minilm", f"embeddings.base_url={ollama_server.url}"]
    overrides = [f"store.uri={tmp_path / 'index.db'}"] + embed
    reports = pdf_index(config="configs/pdf_index.yaml", overrides=overrides, sources=[str(docs)])
    assert {r["status"] for r in reports} == {"indexed"}
    config = load_config(RagConfig, RAG_CONFIG, overrides + ["retrieval.mode=vector"])
    sources = retrieval.retrieve("Who are the misfits and rebels?", config, k=1)
    assert sources[0]["source"].endswith("crazyones-pdfa.pdf")


def test_rag_eval_scores_reports_bad_lines_and_logs_to_mlflow(indexed, tmp_path, capsys):
    from flows.rag_eval import main

    qa = tmp_path / "qa.jsonl"
    qa.write_text(
        "\n".join(
            [
                json.dumps(
                    {"id": "q1", "question": "What is the capital of Finland?", "answers": ["Helsinki"], "page": 3}
                ),
                json.dumps(
                    {"id": "q2", "question": "What should errors never do?", "answers": ["never pass silently"]}
                ),
                json.dumps({"id": "q3", "question": "Where is the answer?", "answers": ["a string in no document"]}),
                '{"id": "broken", "question": ',
                json.dumps({"id": "q5", "question": "No answers"}),
            ]
        )
        + "\n"
    )
    args = ["--qa", str(qa), "--k", "5", "--json"] + [x for item in indexed for x in ("--set", item)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["questions"] == 3 and result["k"] == 5
    assert result["hit_at_k"] == pytest.approx(2 / 3)
    ranks = {r["id"]: r["rank"] for r in result["per_question"]}
    assert ranks["q3"] is None and ranks["q1"] >= 1
    assert result["mrr"] == pytest.approx((1 / ranks["q1"] + 1 / ranks["q2"]) / 3)
    assert 0 < result["mean_chunk_chars"] <= 1000
    assert result["skipped"] == [
        f"{qa}:4: not valid JSON (Expecting value)",
        f"{qa}:5: 'answers' must be a non-empty list of non-empty strings",
    ]
    import mlflow

    run = mlflow.get_run(result["mlflow_run_id"])
    assert run.data.metrics["hit_at_k"] == pytest.approx(2 / 3)
    assert {"mrr", "mean_chunk_chars"} <= set(run.data.metrics)
    assert mlflow.get_experiment(run.info.experiment_id).name == "rag-eval"


def test_rag_eval_needs_a_question_file(indexed, tmp_path, capsys):
    from flows.rag_eval import main

    assert main(["--qa", str(tmp_path / "none.jsonl")] + [x for i in indexed for x in ("--set", i)]) == 1
    assert "question file not found" in capsys.readouterr().err


def test_rag_eval_reports_page_hits_and_paraphrase_violations(indexed, tmp_path, capsys):
    from flows.rag_eval import main

    held_out = Path(__file__).resolve().parents[1] / "data" / "rag_eval" / "multicolumn.jsonl"
    copied = {
        "id": "copied",
        "question": "What is the capital of Finland?",
        "answers": ["Helsinki"],
        "page": 3,
        "passage": "Finland 5.5 338,424 Helsinki Finnish, Swedish, the capital of Finland",
    }
    qa = tmp_path / "qa.jsonl"
    qa.write_text(held_out.read_text() + json.dumps(copied) + "\n")
    args = ["--qa", str(qa), "--k", "5"] + [x for item in indexed for x in ("--set", item)]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["paraphrase_violations"] == [
        "copied: copies 4 consecutive words from its passage: 'the capital of finland'"
    ]
    rows = {r["id"]: r for r in result["per_question"]}
    assert len(rows) == 7 and all(r["page"] == 3 for r in rows.values())
    for row in rows.values():  # the rank of the first chunk from the expected page, or None
        pages = row["retrieved_pages"]
        assert row["page_rank"] == (pages.index(3) + 1 if 3 in pages else None)
    assert result["page_hit_at_k"] == sum(r["page_rank"] is not None for r in rows.values()) / 7
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "paraphrase rule: copied: copies 4 consecutive words" in printed and "page hit@5" in printed


def test_retrieval_as_a_langchain_retriever_in_a_chain(indexed):
    from langchain_core.runnables import RunnableLambda

    config = config_for(indexed)
    retriever = retrieval.RagRetriever(config=config, k=3)
    question = "Which city is the seat of government of Finland?"
    docs = retriever.invoke(question)
    expected = retrieval.retrieve(question, config, 3)
    assert [d.page_content for d in docs] == [s["text"] for s in expected]
    assert docs[0].metadata == {k: v for k, v in expected[0].items() if k != "text"}
    pages = (retriever | RunnableLambda(lambda found: [d.metadata["page"] for d in found])).invoke(question)
    assert pages == [s["page"] for s in expected]


def test_answer_checks_normalize_and_hold_each_cited_page_to_the_answer():
    from tasks.rag.evaluation import cited_pages, states_answer, supporting

    sources = [
        {"source": "/docs/multicolumn.pdf", "page": 3, "text": "Finland 5.5 338,424 Helsinki"},
        {"source": "/docs/multicolumn.pdf", "page": 1, "text": "Lorem ipsum"},
    ]
    answer = "The capital is HELSINKI [multicolumn.pdf p.3], see also [multicolumn.pdf p.1] [multicolumn.pdf p.3]."
    assert states_answer(answer, ["Helsinki"]) and not states_answer(answer, ["Vienna"])
    assert cited_pages(answer) == [("multicolumn.pdf", 3), ("multicolumn.pdf", 1)]
    assert supporting(cited_pages(answer), sources, ["helsinki"]) == [True, False]


def test_rag_eval_answer_mode_through_ollama(indexed, ollama_server, tmp_path, capsys):
    from flows.rag_eval import main
    from tasks.rag.evaluation import states_answer

    held_out = Path(__file__).resolve().parents[1] / "data" / "rag_eval" / "multicolumn.jsonl"
    llm = ["llm.provider=ollama", f"llm.model={OllamaServer.CHAT_MODEL}", f"llm.base_url={ollama_server.url}"]
    args = ["--qa", str(held_out), "--k", "3", "--answers", "--json"]
    assert main(args + [x for item in indexed + llm + ["llm.max_new_tokens=32"] for x in ("--set", item)]) == 0
    result = json.loads(capsys.readouterr().out)
    mode = result["answer_mode"]
    questions = {json.loads(line)["id"]: json.loads(line) for line in held_out.read_text().splitlines()}
    assert len(mode["answers"]) == len(questions) == 6
    for row in mode["answers"]:
        expected = questions[row["id"]]["answers"]
        model_text = row["answer"].split("\n\nSources: ")[0]
        assert row["correct"] == states_answer(model_text, expected)
        assert row["cited"] and len(row["cited_support"]) == len(row["cited"])
    assert mode["answer_accuracy"] == sum(r["correct"] for r in mode["answers"]) / 6
    assert mode["citations_supported"] == sum(r["citations_supported"] for r in mode["answers"]) / 6
    assert mode["seconds_per_answer"] > 0
    import mlflow

    assert mlflow.get_run(result["mlflow_run_id"]).data.metrics["answer_accuracy"] == mode["answer_accuracy"]
