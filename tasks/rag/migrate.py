"""Move a Milvus Lite index to a Milvus server: the same collection, rows and ids, HNSW-indexed.

    python -m tasks.rag.migrate --lite FTLLM_DATA_DIR/rag/index.db --server http://127.0.0.1:19530 \\
        [--collection pdf_chunks] [--into pdf_chunks] [--replace]

Rows keep their ids (the record manager's chunk keys), so the record store goes on as it is: point
`store.records` at the Lite file's record store (`index-records.db`), or at the PostgreSQL
database it was moved to, and set `store.uri` to the server. A target collection that already holds
rows is left alone unless `--replace` is given (then it is dropped first). Keep the collection's
name (the default): the record store keys its rows by it, so under `--into OTHER` the copy starts
without a catalog.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tasks.rag.stores.base import StoreUnavailable
from tasks.rag.stores.milvus import SERVER_INDEX, unavailable

BATCH = 1000


class MigrationRefused(RuntimeError):
    """The target collection holds other data and --replace was not given."""


def _client(uri: str, server: bool):
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    try:
        return MilvusClient(uri=uri)
    except MilvusException as error:
        raise StoreUnavailable(unavailable(uri, server, error.message)) from None


def _schema(client, description: dict):
    """The source collection's schema, rebuilt field by field for the target."""
    schema = client.create_schema(
        auto_id=description["auto_id"], enable_dynamic_field=description["enable_dynamic_field"]
    )
    for field in description["fields"]:
        schema.add_field(
            field["name"], field["type"], is_primary=field.get("is_primary", False), **field.get("params", {})
        )
    return schema


def rows_of(client, collection: str):
    """Every row, vectors included, in batches."""
    iterator = client.query_iterator(collection, batch_size=BATCH, filter="", output_fields=["*"])
    try:
        while batch := iterator.next():
            yield batch
    finally:
        iterator.close()


def migrate(lite: str, server: str, collection: str, into: str, replace: bool) -> int:
    """Copy `collection` from the Lite file into `into` on the server; the number of rows copied."""
    if not Path(lite).exists():  # a Lite "file" may be a folder
        raise FileNotFoundError(f"--lite: no Milvus Lite file at {lite}")
    source = _client(str(Path(lite).resolve()), server=False)
    target = _client(server, server=True)
    try:
        if not source.has_collection(collection):
            raise ValueError(f"--collection: {lite} has no collection {collection!r}")
        source.load_collection(collection)  # a freshly opened file holds its collections released
        if target.has_collection(into):
            target.load_collection(into)
            held = target.query(into, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"]
            if held and not replace:
                raise MigrationRefused(
                    f"collection {into!r} on {server} already holds {held} rows; pass --replace to drop it "
                    "and copy the Lite index in its place"
                )
            target.drop_collection(into)
        index = target.prepare_index_params()
        vector_field = next(
            f["name"] for f in source.describe_collection(collection)["fields"] if "dim" in f.get("params", {})
        )
        index.add_index(field_name=vector_field, **SERVER_INDEX)
        target.create_collection(
            into,
            schema=_schema(target, source.describe_collection(collection)),
            index_params=index,
            consistency_level="Strong",
        )
        copied = 0
        for batch in rows_of(source, collection):
            target.insert(into, batch)
            copied += len(batch)
        target.flush(into)
        return copied
    finally:
        source.close()
        target.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.rag.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lite", required=True, help="the Milvus Lite file (e.g. FTLLM_DATA_DIR/rag/index.db)")
    parser.add_argument("--server", required=True, help="the Milvus server, http://host:19530")
    parser.add_argument("--collection", default="pdf_chunks", help="the collection in the Lite file")
    parser.add_argument("--into", default=None, help="the collection on the server (default: the same name)")
    parser.add_argument("--replace", action="store_true", help="drop a target collection that already holds rows")
    args = parser.parse_args(argv)
    try:
        copied = migrate(args.lite, args.server, args.collection, args.into or args.collection, args.replace)
    except (MigrationRefused, StoreUnavailable, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"copied {copied} rows from {args.lite} ({args.collection}) to {args.server} ({args.into or args.collection})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
