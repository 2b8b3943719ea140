"""Answer a question from the retrieved chunks only, citing pages as `[paper.pdf p.3]`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tasks.chat import make_chat_model
from tasks.rag.config import RagConfig
from tasks.rag.pdfs import display_name
from tasks.rag.retrieval import retrieve

NOT_IN_CONTEXT = "The documents do not say."

SYSTEM_PROMPT = (
    "You answer questions using only the context below, which consists of numbered excerpts from "
    "documents, each headed by its citation like [paper.pdf p.3]. Answer briefly, and after each "
    "statement cite the excerpt it comes from, copying its citation exactly. If the context does not "
    f"contain the answer, reply exactly: {NOT_IN_CONTEXT}"
)

CITATION_PATTERN = re.compile(r"\[([^\[\]\n]+?) p\.\s?(\d+)\]")  # groups: file name, page
SOURCES_APPENDED = "\n\nSources: "  # before the pages given, when the model cited none


@dataclass
class RagAnswer:
    answer: str  # with [file p.N] citations
    sources: list[dict[str, Any]]  # the retrieved chunks, best first (retrieval.as_source)

    def as_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "sources": self.sources}


def citation(source: str, page: int) -> str:
    return f"[{display_name(source)} p.{page}]"


def make_prompt():
    from langchain_core.prompts import ChatPromptTemplate

    return ChatPromptTemplate.from_messages(
        [
            ("system", SYSTEM_PROMPT + "\n\nContext:\n{context}"),
            ("human", "{question}"),
        ]
    )


def format_context(sources: list[dict[str, Any]]) -> str:
    return "\n\n".join(f"({i}) {citation(s['source'], s['page'])}\n{s['text']}" for i, s in enumerate(sources, 1))


def with_citations(answer: str, sources: list[dict[str, Any]]) -> str:
    """The model's answer; when it cited nothing (small models often don't), the pages it was given."""
    answer = answer.strip()
    if not sources or CITATION_PATTERN.search(answer) or answer.startswith(NOT_IN_CONTEXT):
        return answer
    cited = list(dict.fromkeys(citation(s["source"], s["page"]) for s in sources))
    return f"{answer}{SOURCES_APPENDED}{' '.join(cited)}"


def generate_answer(question: str, sources: list[dict[str, Any]], config: RagConfig) -> str:
    """The chat model's answer from the retrieved chunks only, with [file p.N] citations."""
    if not sources:
        return NOT_IN_CONTEXT
    chain = make_prompt() | make_chat_model(config.llm)
    reply = chain.invoke({"context": format_context(sources), "question": question.strip()})
    return with_citations(reply.text, sources)


def answer_question(question: str, config: RagConfig, k: int | None = None) -> dict[str, Any]:
    """{"answer": text with [file p.N] citations, "sources": the retrieved chunks}."""
    sources = retrieve(question, config, k)
    return RagAnswer(generate_answer(question, sources, config), sources).as_dict()
