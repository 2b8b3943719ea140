"""How rag-query asks the chat model, by `answer.prompt`: one entry per kind in `PROMPTS`.

Each prompt says what the model is told (its system message), how many of the retrieved passages
it reads (the best first) and how much it may write. The citations do not depend on the model:
when it cites nothing, rag-query lists the pages it was given (`answer.with_citations`).

- `extract`: the best passages only, and the instruction to copy the short phrase that answers.
  A small model (SmolLM2-135M, the local default) copies a span well when the prompt is short and
  the passage with the answer comes first; asked to also cite, it mostly does neither.
- `cite`: every retrieved passage, each headed by its citation `[file p.N]`, and the instruction to
  answer briefly and cite after each statement: for models that can follow it (1B+ through Ollama
  or an OpenAI-compatible server).
"""

from __future__ import annotations

from dataclasses import dataclass

NOT_IN_CONTEXT = "The documents do not say."


@dataclass(frozen=True)
class AnswerPrompt:
    system: str  # the system message; the context follows it or the question (`context_in_question`)
    passages: int | None  # the best retrieved passages the model reads; None: all of them
    headed: bool  # each passage headed by its citation [file p.N], to copy into the answer
    context_in_question: bool  # the passages go in the user's message, right before the question
    help: str


PROMPTS: dict[str, AnswerPrompt] = {
    "extract": AnswerPrompt(
        system=(
            "Answer the question with a short phrase copied word for word from the context. "
            f"If the context does not contain the answer, reply exactly: {NOT_IN_CONTEXT}"
        ),
        passages=2,
        headed=False,
        context_in_question=True,
        help="the 2 best passages, and copy the phrase that answers (small models)",
    ),
    "cite": AnswerPrompt(
        system=(
            "You answer questions using only the context below, which consists of numbered excerpts from "
            "documents, each headed by its citation like [paper.pdf p.3]. Answer briefly, and after each "
            "statement cite the excerpt it comes from, copying its citation exactly. If the context does not "
            f"contain the answer, reply exactly: {NOT_IN_CONTEXT}"
        ),
        passages=None,
        headed=True,
        context_in_question=False,
        help="every passage headed by its citation; answer and cite each statement (larger models)",
    ),
}
DEFAULT_PROMPT = "extract"
