"""A long PDF's pages extracted by worker processes: the same document as in one process."""

from __future__ import annotations

import pytest

from tasks.core.config import ConfigError, load_config
from tasks.rag import pdfs
from tasks.rag.config import PdfIndexConfig


@pytest.mark.parametrize("name", ["pdflatex-4-pages.pdf", "multicolumn.pdf"])
def test_pages_split_between_processes_give_the_same_document(sample_data, monkeypatch, name):
    data = (sample_data / "pdfs" / name).read_bytes()
    in_process = pdfs.extract_pdf(data, name, processes=1)
    # The sample PDFs are short: let every page count as enough for a process of its own.
    monkeypatch.setattr(pdfs, "PAGES_PER_PROCESS", 1)
    started = []
    real = pdfs._texts_in_processes
    monkeypatch.setattr(pdfs, "_texts_in_processes", lambda *a: started.append(a[-1]) or real(*a))
    split = pdfs.extract_pdf(data, name, processes=2)
    assert started == [2]
    assert split == in_process
    assert [page.number for page in split.pages] == list(range(1, in_process.page_count + 1))


def test_a_failed_worker_s_pages_are_extracted_in_the_indexing_process(sample_data, monkeypatch):
    import sys

    data = (sample_data / "pdfs" / "pdflatex-4-pages.pdf").read_bytes()
    in_process = pdfs.extract_pdf(data, "p.pdf", processes=1)
    monkeypatch.setattr(pdfs, "PAGES_PER_PROCESS", 1)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # every worker exits with status 1
    assert pdfs.extract_pdf(data, "p.pdf", processes=2) == in_process


def test_a_short_pdf_stays_in_the_indexing_process(sample_data, monkeypatch):
    monkeypatch.setattr(pdfs, "_texts_in_processes", lambda *a: pytest.fail("started processes for 4 pages"))
    data = (sample_data / "pdfs" / "pdflatex-4-pages.pdf").read_bytes()
    assert pdfs.extract_pdf(data, "p.pdf", processes=2).page_count == 4


def test_extract_processes_must_be_positive():
    with pytest.raises(ConfigError, match="index.extract_processes"):
        load_config(PdfIndexConfig, None, ["index.extract_processes=0"])
