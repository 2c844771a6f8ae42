"""Semantic search over the Sherlock Holmes canon with nothing but pyarrow.

    make run                                                   # in another terminal
    python3 examples/sherlock/search.py "the speckled band" "a dog that did nothing in the night"

Creates the table `sherlock` with a server-side embedding model, puts the passages as text rows
(the server embeds them: no `embedding` column is sent), then searches with plain-text queries.
Putting the passages again updates the rows in place (DoPut upserts on `id`); --no-load skips it.
"""
import argparse
import json
import os
import sys

import pyarrow as pa
import pyarrow.flight as flight

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import passages  # noqa: E402  (passages.py beside this file)

TABLE = "sherlock"
BATCH = 1000
QUERIES = [
    "the speckled band",
    "a venomous snake trained to answer a whistle",
    "a league that pays red-haired men to copy the encyclopaedia",
    "wounded in Afghanistan, looking for cheap lodgings in London",
    "a woman outwits the detective and keeps the photograph",
]
SCHEMA = pa.schema([
    ("id", pa.utf8()),
    ("data_type", pa.utf8()),
    ("raw_data", pa.binary()),
    ("metadata", pa.utf8()),
])


def load_passages(path):
    if path:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(passages.DEFAULT_INPUT, encoding="utf-8") as f:
        return passages.passages(f.read())


def create_table(client):
    body = json.dumps({"name": TABLE, "embedding_model": "all-minilm-l6-v2"}).encode()
    try:
        for result in client.do_action(flight.Action("create_table", body)):
            table = json.loads(result.body.to_pybytes())
            print(f"created table '{table['name']}': dim {table['dim']}, model {table.get('embedding_model')}")
    except (pa.ArrowException, flight.FlightError) as e:
        if "already exists" not in str(e):
            raise
        print(f"table '{TABLE}' already exists; putting into it")


def put(client, rows):
    for start in range(0, len(rows), BATCH):
        batch = rows[start:start + BATCH]
        table = pa.table({
            "id": [r["id"] for r in batch],
            "data_type": ["text"] * len(batch),
            "raw_data": [r["text"].encode("utf-8") for r in batch],
            "metadata": [
                json.dumps({k: r[k] for k in ("story", "chapter", "chapter_title", "passage")})
                for r in batch
            ],
        }, schema=SCHEMA)
        # "rows": the server refuses a stream that ends short of it (pyarrow ends the stream
        # normally even when this program fails mid-write), so a failed put writes nothing.
        descriptor = flight.FlightDescriptor.for_command(json.dumps({"table": TABLE, "rows": len(batch)}))
        writer, reader = client.do_put(descriptor, SCHEMA)
        writer.write_table(table)
        writer.done_writing()
        result = json.loads(reader.read().to_pybytes())  # {"table", "inserted", "updated", "embedded", "version"}
        print(f"put rows {start}..{start + len(batch) - 1}:", result)
        writer.close()  # raises the server's error if the put was refused


def search(client, query, k):
    ticket = {"table": TABLE, "text": query, "k": k, "columns": ["id", "metadata", "raw_data"]}
    hits = client.do_get(flight.Ticket(json.dumps(ticket))).read_all().to_pylist()
    print(f"\n{query!r}")
    for rank, hit in enumerate(hits, 1):
        meta = json.loads(hit["metadata"])
        # Rows put by others (the README's quickstart shares this table name) may lack keys.
        chapter = meta.get("chapter")
        where = meta.get("story", "?") + (f", ch. {chapter}" if chapter is not None else "")
        text = hit["raw_data"].decode("utf-8")
        print(f"{rank}. {hit['_distance']:.3f}  {where}  [{hit['id']}]\n   {text[:120]}...")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("queries", nargs="*", help="text queries (default: a few examples)")
    ap.add_argument("--addr", default="grpc://127.0.0.1:50051")
    ap.add_argument("--passages", help="JSON lines from passages.py (default: split the canon now)")
    ap.add_argument("--no-load", action="store_true", help="only search; the table is already loaded")
    ap.add_argument("-k", type=int, default=5)
    args = ap.parse_args()

    client = flight.connect(args.addr)
    if not args.no_load:
        create_table(client)
        put(client, load_passages(args.passages))
    for query in args.queries or QUERIES:
        search(client, query, args.k)


if __name__ == "__main__":
    main()
