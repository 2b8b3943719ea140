"""RAG over PDFs: fetch, extract, chunk, embed, store (Milvus Lite, Milvus, Weaviate), retrieve, answer.

Other areas use only what is named here.
"""

from tasks.rag.answer import answer_question
from tasks.rag.config import RagConfig

__all__ = ["RagConfig", "answer_question"]
