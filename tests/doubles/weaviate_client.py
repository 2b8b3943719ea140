"""An in-memory Weaviate v4 client, the part `langchain_weaviate.WeaviateVectorStore` calls to search.

No Weaviate server can run on these machines, so this double speaks the client interface that
langchain-weaviate uses (`collections.exists/create_from_dict/get`, `collection.config.get`,
`collection.query.hybrid(query, vector, limit, alpha, return_metadata)`) and answers hybrid
queries the way Weaviate's default relative-score fusion does: BM25 and vector scores each scaled
to [0, 1] over the candidates, then `alpha * vector + (1 - alpha) * keyword`, with the server's
default alpha 0.75 when the client sends none (as langchain-weaviate does). Every hybrid call is
recorded, so a test can see what the store asked for.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

WEAVIATE_DEFAULT_ALPHA = 0.75  # the server's, used when a query names no alpha


@dataclass
class StoredObject:
    properties: dict[str, Any]
    vector: list[float]
    uuid: uuid.UUID = field(default_factory=uuid.uuid4)


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def bm25(query: str, texts: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    """Okapi BM25 of each text for the query (Weaviate's keyword score)."""
    docs = [words(t) for t in texts]
    mean_len = sum(len(d) for d in docs) / len(docs)
    scores = [0.0] * len(docs)
    for term in set(words(query)):
        having = sum(term in d for d in docs)
        if not having:
            continue
        idf = math.log(1 + (len(docs) - having + 0.5) / (having + 0.5))
        for i, d in enumerate(docs):
            tf = d.count(term)
            scores[i] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / mean_len))
    return scores


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)


def scaled(scores: list[float]) -> list[float]:
    low, high = min(scores), max(scores)
    return [(s - low) / (high - low) if high > low else 0.0 for s in scores]


class Query:
    def __init__(self, collection: Collection):
        self.collection = collection

    def hybrid(
        self, query: str | None, vector: list[float], limit: int, alpha: float = WEAVIATE_DEFAULT_ALPHA, **kwargs
    ):
        self.collection.client.hybrid_calls.append({"query": query, "limit": limit, "alpha": alpha, **kwargs})
        objects = self.collection.objects
        if not objects:
            return SimpleNamespace(objects=[])
        text_key = self.collection.text_key
        by_vector = scaled([cosine(vector, o.vector) for o in objects])
        by_keyword = scaled(bm25(query, [o.properties[text_key] for o in objects])) if query else [0.0] * len(objects)
        fused = [alpha * v + (1 - alpha) * kw for v, kw in zip(by_vector, by_keyword, strict=True)]
        order = sorted(range(len(objects)), key=lambda i: fused[i], reverse=True)[:limit]
        return SimpleNamespace(
            objects=[
                SimpleNamespace(
                    properties=dict(objects[i].properties),
                    metadata=SimpleNamespace(score=fused[i]),
                    vector={},
                    uuid=objects[i].uuid,
                )
                for i in order
            ]
        )


class Collection:
    def __init__(self, client: WeaviateClientDouble, text_key: str):
        self.client = client
        self.text_key = text_key
        self.objects: list[StoredObject] = []
        self.query = Query(self)
        self.config = SimpleNamespace(
            get=lambda simple=True: SimpleNamespace(multi_tenancy_config=SimpleNamespace(enabled=False))
        )


class Collections:
    def __init__(self, client: WeaviateClientDouble):
        self.client = client
        self.by_name: dict[str, Collection] = {}

    def exists(self, name: str) -> bool:
        return name in self.by_name

    def create_from_dict(self, schema: dict) -> None:
        text_key = schema["properties"][0]["name"]
        self.by_name[schema["class"]] = Collection(self.client, text_key)

    def get(self, name: str) -> Collection:
        return self.by_name[name]


class WeaviateClientDouble:
    def __init__(self):
        self.collections = Collections(self)
        self.integrations = SimpleNamespace(configure=lambda integration: None)
        self.hybrid_calls: list[dict[str, Any]] = []
        self.closed = False

    def add(self, collection: str, properties: dict[str, Any], vector: list[float]) -> None:
        """Store an object as if a batch import had written it."""
        self.collections.get(collection).objects.append(StoredObject(properties, vector))

    def close(self) -> None:
        self.closed = True
