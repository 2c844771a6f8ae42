"""Hyprstream quickstart with nothing but pyarrow: put rows, scan, search, filter, delete.

    make run                              # in another terminal
    python3 examples/python/quickstart.py
"""
import base64
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

url = os.environ.get("HYPRSTREAM_URL", "grpc://127.0.0.1:50051")
c = flight.connect(url)

dim = 8
rng = np.random.default_rng(0)
vectors = rng.standard_normal((100, dim)).astype(np.float32)
table = pa.table(
    {
        "id": [f"passage-{i}" for i in range(100)],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        "data_type": ["text"] * 100,
        "raw_data": [f"Passage {i} of A Study in Scarlet".encode() for i in range(100)],
        "metadata": pa.array([json.dumps({"story": "A Study in Scarlet", "chapter": i % 7}) for i in range(100)], pa.json_()),
    }
)

# DoPut: upsert on id, one commit; the PutResult says what happened. "rows" makes the server
# refuse a stream that ends short (pyarrow ends it normally even if this program fails
# mid-write), so a failed put writes nothing; for_path("quickstart") works too, without that.
put = flight.FlightDescriptor.for_command(json.dumps({"table": "quickstart", "rows": table.num_rows}))
w, r = c.do_put(put, table.schema)
w.write_table(table)
w.done_writing()
result = r.read()
w.close()  # raises the server's error (e.g. pa.ArrowInvalid) if the put was refused
print("put:", json.loads(result.to_pybytes()))

# DoGet: a scan ...
rows = c.do_get(flight.Ticket(json.dumps({"table": "quickstart", "limit": 3}))).read_all()
print("scan:", rows.select(["id", "metadata"]).to_pylist())

# ... and a search, nearest first, with a filter on a metadata key.
q = vectors[42].tolist()
ticket = {"table": "quickstart", "vector": q, "k": 3, "filter": "json_get_int(metadata, 'chapter') = 0"}
rows = c.do_get(flight.Ticket(json.dumps(ticket))).read_all()
print("nearest in chapter 0:", list(zip(rows["id"].to_pylist(), rows["_distance"].to_pylist())))
# A program sends the vector as base64 of its float32 bytes: exact, and no float-to-text cost.
q64 = base64.b64encode(vectors[42].astype("<f4").tobytes()).decode()
rows = c.do_get(flight.Ticket(json.dumps({"table": "quickstart", "vector": q64, "k": 1}))).read_all()
print("nearest:", rows["id"][0].as_py())

# DoAction: JSON in, JSON out.
def action(name, body):
    return [json.loads(x.body.to_pybytes()) for x in c.do_action(flight.Action(name, json.dumps(body).encode()))]

print("delete:", action("delete", {"table": "quickstart", "filter": "id = 'passage-42'"}))
print("describe:", {k: v for k, v in action("describe_table", {"name": "quickstart"})[0].items() if k != "schema"})
