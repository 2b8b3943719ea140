"""Answer a question from the retrieved chunks only, citing pages as `[paper.pdf p.3]`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tasks.chat import make_chat_model
from tasks.rag.config import RagConfig
from tasks.rag.pdfs import display_name
from tasks.rag.prompts import NOT_IN_CONTEXT, PROMPTS, AnswerPrompt
from tasks.rag.retrieval import retrieve

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


def make_prompt(prompt: AnswerPrompt):
    """The chat prompt of an `answer.prompt` kind, with {context} and {question} to fill in."""
    from langchain_core.prompts import ChatPromptTemplate

    if prompt.context_in_question:
        return ChatPromptTemplate.from_messages(
            [("system", prompt.system), ("human", "Context:\n{context}\n\nQuestion: {question}")]
        )
    return ChatPromptTemplate.from_messages(
        [("system", prompt.system + "\n\nContext:\n{context}"), ("human", "{question}")]
    )


def format_context(sources: list[dict[str, Any]], headed: bool = True) -> str:
    """The passages, best first: numbered and headed by their citations, or as plain text."""
    if not headed:
        return "\n\n".join(s["text"] for s in sources)
    return "\n\n".join(f"({i}) {citation(s['source'], s['page'])}\n{s['text']}" for i, s in enumerate(sources, 1))


def with_citations(answer: str, sources: list[dict[str, Any]]) -> str:
    """The model's answer; when it cited nothing (small models often don't), the pages it was given."""
    answer = answer.strip()
    if not sources or CITATION_PATTERN.search(answer) or answer.startswith(NOT_IN_CONTEXT):
        return answer
    cited = list(dict.fromkeys(citation(s["source"], s["page"]) for s in sources))
    return f"{answer}{SOURCES_APPENDED}{' '.join(cited)}"


def generate_answer(question: str, sources: list[dict[str, Any]], config: RagConfig) -> str:
    """The chat model's answer from the retrieved chunks only (as many as `answer.prompt` reads, best
    first), with [file p.N] citations: the model's own, else the pages it was given."""
    if not sources:
        return NOT_IN_CONTEXT
    prompt = PROMPTS[config.answer.prompt]
    given = sources[: prompt.passages] if prompt.passages else sources
    chain = make_prompt(prompt) | make_chat_model(config.llm)
    reply = chain.invoke({"context": format_context(given, prompt.headed), "question": question.strip()})
    return with_citations(reply.text, given)


def answer_question(question: str, config: RagConfig, k: int | None = None) -> dict[str, Any]:
    """{"answer": text with [file p.N] citations, "sources": the retrieved chunks}."""
    sources = retrieve(question, config, k)
    return RagAnswer(generate_answer(question, sources, config), sources).as_dict()
