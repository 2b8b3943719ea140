"""Milvus: a Lite file (the default, `FTLLM_DATA_DIR/rag/index.db`: embedded, persistent across
restarts) or a server or cluster URL (`http://127.0.0.1:19530`), the same code.

Its record store sits beside a Lite file (`index-records.db` for `index.db`), or under
`FTLLM_DATA_DIR/rag/` for a server.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

# Imported with this module, before any flow run starts, not when the store first opens: pymilvus
# configures logging on import (logging.config.dictConfig), which flushes every installed handler
# while holding logging's lock. Inside a flow run, Prefect's API log handler then waits out its 5 s
# flush timeout for a worker that needs that same lock: 5 s lost in every run that opens the store.
from pymilvus.exceptions import MilvusException

from tasks.core.config import data_dir, require
from tasks.rag.stores.base import OpenStore, StoreKind, StoreUnavailable, is_server_uri, server_records, token

if TYPE_CHECKING:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings

    from tasks.rag.config import StoreOptions


# Normalized embeddings, cosine similarity: scores read as similarities in [-1, 1].
# Milvus Lite searches exhaustively (FLAT) whatever index type it is asked for (milvus-lite 3.2
# reports AUTOINDEX for HNSW, IVF_FLAT, IVF_SQ8 and IVF_PQ requests alike): ~500 ms a query at 100k
# chunks. Beyond a few 10k chunks use a server, where HNSW answers in milliseconds.
LITE_INDEX = {"metric_type": "COSINE", "index_type": "FLAT"}
LITE_SEARCH = {"metric_type": "COSINE"}
# HNSW: M = graph links per vector (memory ~ M x 8 bytes per vector; recall rises with M),
# efConstruction = candidates while building (build time vs graph quality), ef = candidates per
# search (latency vs recall; must be >= k). 16/200/64 keep recall@5 near exact search at 100k.
SERVER_INDEX = {"metric_type": "COSINE", "index_type": "HNSW", "params": {"M": 16, "efConstruction": 200}}
SERVER_SEARCH = {"metric_type": "COSINE", "params": {"ef": 64}}


def check(options: StoreOptions) -> None:
    if options.uri and "://" in options.uri:
        require(
            is_server_uri(options.uri), "store.uri", f"milvus takes a file path or an http(s) URL, got {options.uri!r}"
        )


def location(options: StoreOptions) -> str:
    """The server URL as configured, or the Lite file made absolute."""
    if is_server_uri(options.uri):
        return options.uri
    path = Path(options.uri).expanduser() if options.uri else data_dir() / "rag" / "index.db"
    return str(path.resolve())


def default_records(options: StoreOptions) -> Path:
    if is_server_uri(options.uri):
        return server_records(options)
    index_file = Path(location(options))
    return index_file.with_name(f"{index_file.stem}-records.db")


def open_milvus(options: StoreOptions, embeddings: Embeddings) -> OpenStore:
    where = location(options)
    server = is_server_uri(where)
    connection: dict[str, Any] = {"uri": where}
    if secret := token(options):
        connection["token"] = secret
    if not server:
        Path(where).parent.mkdir(parents=True, exist_ok=True)
    try:
        vectors = _idempotent_milvus()(
            embedding_function=embeddings,
            collection_name=options.collection,
            connection_args=connection,
            index_params=SERVER_INDEX if server else LITE_INDEX,
            search_params=SERVER_SEARCH if server else LITE_SEARCH,
            auto_id=False,
            # Strong by default: a query right after an upsert sees it (Milvus' default, Session, is per
            # client); searches may ask for less (store.read_consistency).
            consistency_level="Strong",
        )
    except MilvusException as error:
        raise StoreUnavailable(unavailable(where, server, error.message)) from None
    # Searches may read a slightly older snapshot than writes (store.read_consistency): on a server a
    # strong search waits for the next time tick, which dominates a HNSW search's own milliseconds.
    reads = {"consistency_level": "Bounded"} if server and options.read_consistency == "bounded" else {}
    return OpenStore(
        vectors, flush=lambda: _flush(vectors), close=lambda: _close(vectors, where, server), search_kwargs=reads
    )


def unavailable(where: str, server: bool, reason: str) -> str:
    if server:
        return f"Milvus server {where} cannot be reached or refused the connection ({reason}); is it running?"
    # Milvus Lite serves a file to one process at a time.
    return (
        f"the Milvus Lite index {where} cannot be opened ({reason}); another "
        "process (a chat app, a running pdf-index or rag-query) may have it open: Milvus "
        "Lite allows one process per file. Stop it, or use a Milvus server "
        "(store.uri=http://127.0.0.1:19530) for concurrent use"
    )


def _idempotent_milvus():
    from langchain_milvus import Milvus

    # Subclassed because LangChain's index() calls add_documents on the store it is given.
    class IdempotentMilvus(Milvus):
        """Milvus whose add_documents upserts when given ids.

        LangChain's `index()` adds a batch, then records it. Milvus does not enforce unique primary
        keys, so a plain insert retried after a crash between those two steps would store each
        chunk twice; an upsert makes the retry harmless.
        """

        def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
            ids = kwargs.get("ids")
            if ids and self.client.has_collection(self.collection_name):
                return self._upsert(list(ids), documents)
            try:
                return super().add_documents(documents, **kwargs)
            except MilvusException:
                # Another indexer created the collection between the check and the create.
                if not (ids and self.client.has_collection(self.collection_name)):
                    raise
                return self._upsert(list(ids), documents)

        def _upsert(self, ids: list[str], documents: list[Document]) -> list[str]:
            if not self.fields:  # the collection was created by another process after this store opened
                self._init()
            self.upsert(ids=ids, documents=documents)
            return ids

    return IdempotentMilvus


def _flush(vectors) -> None:
    """A server killed before flushing loses unflushed rows."""
    if vectors.client.has_collection(vectors.collection_name):
        vectors.client.flush(vectors.collection_name)


def _close(vectors, where: str, server: bool) -> None:
    vectors.client.close()
    if not server:  # stop the Lite file server too, so that another process can open the file
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(where)


STORE = StoreKind(open=open_milvus, location=location, default_records=default_records, check=check)
