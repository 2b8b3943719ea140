"""Chunking, keyword terms, and the pdf-index flow end to end: real PDFs, Milvus Lite, Prefect, MLflow."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tasks.core.config import load_config
from tasks.rag import chunking, embeddings, indexing, keywords, pdfs, stores
from tasks.rag.catalog import Catalog
from tasks.rag.config import ChunkOptions, EmbeddingOptions, PdfIndexConfig
from tests.support.rag import BAD_PDFS, GOOD_PDFS, by_name, count_vectors, pdf_folder, store_overrides

CONFIG = "configs/pdf_index.yaml"


# --- chunking and keyword terms (plain functions) ---------------------------------------------


@pytest.fixture(scope="module")
def multicolumn(sample_data):
    path = sample_data / "pdfs" / "multicolumn.pdf"
    return pdfs.extract_pdf(path.read_bytes(), str(path))


@pytest.mark.parametrize("splitter", ["recursive", "character"])
def test_chunks_keep_source_page_and_size(multicolumn, splitter):
    options = ChunkOptions(splitter=splitter, size=400, overlap=50, separator="\n")
    chunks = chunking.chunk_document(multicolumn, options)
    assert len(chunks) > 10
    assert {c.metadata["page"] for c in chunks} == {1, 2, 3}
    assert all(c.metadata["source"] == multicolumn.source for c in chunks)
    assert all(len(c.page_content) <= 400 for c in chunks)
    assert len({c.metadata["chunk_id"] for c in chunks}) == len(chunks)
    assert any("Helsinki" in c.page_content and c.metadata["page"] == 3 for c in chunks)


def test_character_splitter_with_langchains_default_separator_keeps_whole_pages(multicolumn):
    # The original design's behaviour: "\n\n" never occurs in pypdf's page text, so pages stay whole.
    chunks = chunking.chunk_document(
        multicolumn, ChunkOptions(splitter="character", size=1000, overlap=200, separator="\n\n")
    )
    assert len(chunks) == 3 and all(len(c.page_content) > 1000 for c in chunks[:2])


def test_chunk_options_are_checked():
    from tasks.core.config import ConfigError

    with pytest.raises(ConfigError, match="chunk.overlap: must be in"):
        load_config(PdfIndexConfig, CONFIG, ["chunk.size=100", "chunk.overlap=100"])
    with pytest.raises(ConfigError, match="unknown key 'chunk.sise'"):
        load_config(PdfIndexConfig, CONFIG, ["chunk.sise=100"])
    with pytest.raises(ConfigError, match="store.read_consistency"):
        load_config(PdfIndexConfig, CONFIG, ["store.read_consistency=eventually"])


def test_section_titles_come_from_the_outline_and_lead_their_chunks(sample_data):
    path = sample_data / "pdfs" / "pdflatex-outline.pdf"
    doc = pdfs.extract_pdf(path.read_bytes(), str(path))
    assert [(s.page, s.title) for s in doc.sections] == [
        (2, "Foo"), (2, "Bar"), (2, "Baz"), (2, "Foo"), (3, "Bar"), (3, "Baz"), (3, "Foo"), (4, "Bar"), (4, "Baz")
    ]  # fmt: skip
    plain = chunking.chunk_document(doc, ChunkOptions(size=300, overlap=50, section_titles=False))
    titled = chunking.chunk_document(doc, ChunkOptions(size=300, overlap=50, section_titles=True))
    assert [c.metadata for c in titled] == [c.metadata for c in plain]  # same chunks, same ids and pages
    # Each section's heading ("3 Baz") is followed by chunks that name it, until the next heading.
    current, checked = None, 0
    for plain_chunk, titled_chunk in zip(plain, titled, strict=True):
        text = plain_chunk.page_content
        heading = next(iter(re.findall(r"^\d (Foo|Bar|Baz)$", text[:40], re.MULTILINE)), None)
        if plain_chunk.metadata["page"] == 1:  # the table of contents: before any section
            assert titled_chunk.page_content == text
        elif heading:  # a chunk that starts with its heading is not given the title again
            current = heading
            assert titled_chunk.page_content == text
        elif current:
            assert titled_chunk.page_content == f"{current}\n{text}"
            checked += 1
        current = (re.findall(r"^\d (Foo|Bar|Baz)$", text, re.MULTILINE) or [current])[-1]
    assert checked > 20

    no_outline = pdfs.extract_pdf((sample_data / "pdfs" / "multicolumn.pdf").read_bytes(), "multicolumn.pdf")
    assert no_outline.sections == []
    assert chunking.chunk_document(no_outline, ChunkOptions(section_titles=True)) == chunking.chunk_document(
        no_outline, ChunkOptions(section_titles=False)
    )


def test_keyword_terms_drop_stopwords_and_match_inflections():
    assert keywords.keyword_terms("Was ist der Sierpińskiraum?") == ['"sierpińskira"*']
    assert keywords.keyword_terms('What are the "properties" of it in 2024?') == ['"properti"*', '"2024"']
    assert keywords.keyword_terms("the of and") == []


def keyword_chunks(source: str, texts: list[str]):
    from langchain_core.documents import Document

    return [
        Document(page_content=t, metadata={"page": 1, "title": source, "chunk_id": f"{source}:c{i}"})
        for i, t in enumerate(texts)
    ]


def test_each_collection_ranks_keywords_over_its_own_chunks_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'records.db'}"
    papers, manuals = Catalog(url, "papers"), Catalog(url, "manuals")
    papers.complete("a.pdf", "f", 1, keyword_chunks("a.pdf", ["compact spaces are closed", "metric spaces"]))
    before = papers.keyword_search("compact spaces", 5)
    # Another collection in the same record store, full of one of the words: BM25 here stays as it was.
    manuals.complete("m.pdf", "f", 1, keyword_chunks("m.pdf", [f"spaces and tabs {i}" for i in range(50)]))
    after = papers.keyword_search("compact spaces", 5)
    assert [(d.metadata["chunk_id"], score) for d, score in after] == [
        (d.metadata["chunk_id"], score) for d, score in before
    ]
    assert {d.metadata["source"] for d, _ in manuals.keyword_search("spaces", 100)} == {"m.pdf"}
    assert len(manuals.keyword_search("spaces", 100)) == 50


def test_a_record_store_with_one_shared_keyword_table_is_moved_to_per_collection_tables(tmp_path):
    import sqlite3

    path = tmp_path / "records.db"
    with sqlite3.connect(path) as db:  # the layout record stores written before had
        db.execute(
            "CREATE VIRTUAL TABLE chunks_fts USING fts5(text, namespace UNINDEXED, source UNINDEXED, "
            "page UNINDEXED, title UNINDEXED, chunk_id UNINDEXED, tokenize = 'porter unicode61 remove_diacritics 2')"
        )
        db.executemany(
            "INSERT INTO chunks_fts VALUES (?, ?, ?, 1, 't', ?)",
            [("compact spaces", "papers", "a.pdf", "a:c0"), ("spaces and tabs", "manuals", "m.pdf", "m:c0")],
        )
    papers = Catalog(f"sqlite:///{path}", "papers")
    assert [d.metadata["chunk_id"] for d, _ in papers.keyword_search("spaces", 5)] == ["a:c0"]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT namespace FROM chunks_fts").fetchall() == [("manuals",)]  # moved once
    manuals = Catalog(f"sqlite:///{path}", "manuals")
    assert [d.metadata["chunk_id"] for d, _ in manuals.keyword_search("spaces", 5)] == ["m:c0"]


def test_fingerprint_changes_with_file_chunking_and_model():
    chunk, embed = ChunkOptions(), EmbeddingOptions()
    base = indexing.fingerprint("aa", chunk, embed)
    assert base == indexing.fingerprint("aa", ChunkOptions(), EmbeddingOptions())
    assert base != indexing.fingerprint("ab", chunk, embed)
    assert base != indexing.fingerprint("aa", ChunkOptions(size=700), embed)
    assert base != indexing.fingerprint("aa", chunk, EmbeddingOptions(model="/other/model"))


# --- the pdf-index flow -----------------------------------------------------------------------


def run_index(folder, overrides, sources=None):
    from flows.pdf_index import pdf_index

    return by_name(pdf_index(config=CONFIG, overrides=overrides, sources=[str(s) for s in (sources or [folder])]))


def record_store_rows(path) -> dict[str, list[tuple]]:
    """The record manager's keys and the catalog's documents, each with the time it was last written."""
    import sqlite3

    with sqlite3.connect(path) as db:
        return {
            "upsertion_record": db.execute("SELECT key, updated_at FROM upsertion_record ORDER BY key").fetchall(),
            "documents": db.execute("SELECT source, updated FROM documents ORDER BY source").fetchall(),
        }


def test_index_lifecycle_bad_inputs_unchanged_replaced_deleted(prefect_harness, sample_data, tmp_path):
    docs = pdf_folder(sample_data, tmp_path / "docs")
    overrides = store_overrides(tmp_path)
    uri = str(tmp_path / "index.db")

    first = run_index(docs, overrides)
    for name, reason in BAD_PDFS.items():
        assert first[name]["status"] == "failed" and reason in first[name]["reason"]
    assert all(first[name]["status"] == "indexed" for name in GOOD_PDFS)
    chunks = sum(first[name]["chunks"] for name in GOOD_PDFS)
    assert count_vectors(uri) == chunks
    written = record_store_rows(tmp_path / "index-records.db")
    assert len(written["upsertion_record"]) == chunks

    second = run_index(docs, overrides)  # the same sources again: nothing is re-embedded or rewritten
    assert all(second[name]["status"] == "unchanged" for name in GOOD_PDFS)
    assert [second[name]["chunks"] for name in GOOD_PDFS] == [first[name]["chunks"] for name in GOOD_PDFS]
    assert count_vectors(uri) == chunks
    assert record_store_rows(tmp_path / "index-records.db") == written  # every record keeps its write time

    shutil.copy(sample_data / "pdfs" / "pdflatex-outline.pdf", docs / "multicolumn.pdf")  # same name, new content
    (docs / "crazyones-pdfa.pdf").unlink()
    third = run_index(docs, overrides)
    assert third["multicolumn.pdf"]["status"] == "replaced"
    assert third["crazyones-pdfa.pdf"]["status"] == "deleted"
    assert third["crazyones-pdfa.pdf"]["chunks"] == first["crazyones-pdfa.pdf"]["chunks"]
    assert third["habibi.pdf"]["status"] == "unchanged"
    live = [n for n in GOOD_PDFS if n != "crazyones-pdfa.pdf"]
    assert count_vectors(uri) == sum(third[n]["chunks"] for n in live)

    # The report reached MLflow (experiment pdf-index) and Prefect (a table artifact).
    import mlflow

    from tasks.core import tracking

    tracking.configure()
    runs = mlflow.search_runs(experiment_names=["pdf-index"], filter_string=f"params.`store.uri` = '{uri}'")
    assert len(runs) == 3
    assert sorted(runs["metrics.documents_failed"]) == [2, 2, 2]
    assert sorted(runs["metrics.documents_deleted"]) == [0, 0, 1]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pdf-index-report"]))
        )
    rows = [row for a in artifacts for row in (json.loads(a.data) if isinstance(a.data, str) else a.data)]
    assert any(r["status"] == "deleted" and r["source"].endswith("crazyones-pdfa.pdf") for r in rows)


def test_an_interrupted_run_is_finished_without_duplicates(prefect_harness, sample_data, tmp_path):
    from langchain_classic.indexes import index

    docs = pdf_folder(sample_data, tmp_path / "docs", ["pdflatex-4-pages.pdf"])
    overrides = store_overrides(tmp_path)
    config = load_config(PdfIndexConfig, CONFIG, overrides)
    source = str((docs / "pdflatex-4-pages.pdf").resolve())
    doc = pdfs.extract_pdf((docs / "pdflatex-4-pages.pdf").read_bytes(), source)
    chunks = chunking.chunk_document(doc, config.chunk)
    # A crash after the first half of the chunks reached the store and the record manager:
    store = stores.open_store(config.store, embeddings.make_embeddings(config.embeddings))
    records = stores.records_url(config.store)
    catalog = Catalog(records, config.store.collection)
    catalog.begin(source)
    index(
        chunks[: len(chunks) // 2],
        indexing.make_record_manager(records, config.store.collection),
        store.vectors,
        cleanup=None,
        source_id_key="source",
        key_encoder=indexing.KEY_ENCODER,
    )
    store.flush()
    assert count_vectors(str(tmp_path / "index.db")) == len(chunks) // 2

    report = run_index(docs, overrides)["pdflatex-4-pages.pdf"]
    assert report["status"] == "indexed" and report["reason"] == "finished an interrupted earlier run"
    assert report["chunks"] == len(chunks)
    assert count_vectors(str(tmp_path / "index.db")) == len(chunks)
    assert run_index(docs, overrides)["pdflatex-4-pages.pdf"]["status"] == "unchanged"


def test_password_from_the_environment_opens_the_pdf_and_stays_out_of_mlflow(
    prefect_harness, sample_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("FTLLM_TEST_PDF_PASSWORD", "openpassword")
    docs = pdf_folder(sample_data, tmp_path / "docs", ["encrypted.pdf", "habibi.pdf"])
    overrides = store_overrides(tmp_path) + ["passwords={encrypted.pdf: env:FTLLM_TEST_PDF_PASSWORD}"]
    report = run_index(docs, overrides)
    assert report["encrypted.pdf"]["status"] == "indexed"

    # A literal password works too, but is masked wherever the config is recorded.
    literal = store_overrides(tmp_path / "other") + ["passwords={encrypted.pdf: openpassword}"]
    assert run_index(docs, literal)["encrypted.pdf"]["status"] == "indexed"
    import mlflow

    runs = mlflow.search_runs(experiment_names=["pdf-index"], output_format="list")
    for run in runs:
        recorded = json.dumps(run.data.params) + json.dumps(run.data.tags)
        assert "openpassword" not in recorded
        config_yaml = mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config.yaml")
        assert "openpassword" not in config_yaml


def test_run_fails_only_when_nothing_could_be_indexed(prefect_harness, sample_data, tmp_path, capsys):
    from flows.pdf_index import main

    docs = pdf_folder(sample_data, tmp_path / "docs", tuple(BAD_PDFS))
    code = main(
        [
            "--source",
            str(docs),
            "--source",
            str(tmp_path / "missing.pdf"),
            "--json",
            "--set",
            f"store.uri={tmp_path / 'index.db'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "no document could be indexed" in err and "missing.pdf: file not found" in err
    assert "images-only.pdf: no text layer" in err


def test_cli_prints_the_report_as_json(prefect_harness, sample_data, tmp_path, capsys):
    from flows.pdf_index import main

    docs = pdf_folder(sample_data, tmp_path / "docs", ["habibi.pdf"])
    assert main(["--source", str(docs), "--json", "--set", f"store.uri={tmp_path / 'index.db'}"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [set(r) for r in report] == [{"source", "status", "reason", "pages", "chunks", "seconds"}]
    assert report[0]["status"] == "indexed" and report[0]["pages"] == 1


def test_no_sources_is_a_clear_error(prefect_harness, tmp_path, capsys):
    from flows.pdf_index import main

    assert main(["--set", f"store.uri={tmp_path / 'index.db'}"]) == 1
    assert "no sources: pass --source" in capsys.readouterr().err
