"""RAG over PDFs: fetch, extract, chunk, embed, store (Milvus Lite, Milvus, Weaviate), retrieve, answer.

Other areas use only what is named here.
"""

from tasks.rag.query import RagConfig, answer_question

__all__ = ["RagConfig", "answer_question"]
