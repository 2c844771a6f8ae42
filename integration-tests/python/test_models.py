"""Models as data from Python: the default model imported at startup, auto-embedding on
DoPut, text search by ticket, the Arrow `embed` ticket, and the `models` table read back as
safetensors by plain pyarrow + numpy."""
import json
import os
import struct

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import models_dir

MODEL = "all-minilm-l6-v2"


def action(client, name, body):
    return [json.loads(r.body.to_pybytes()) for r in client.do_action(flight.Action(name, json.dumps(body).encode()))]


def read_safetensors(buf):
    """name -> numpy array, from a safetensors buffer (no safetensors package needed)."""
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dtype = {"F32": np.float32, "I64": np.int64}[info["dtype"]]
        out[name] = np.frombuffer(buf[8 + n + a : 8 + n + b], dtype=dtype).reshape(info["shape"])
    return out


def put(client, table, tbl):
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(table), tbl.schema)
    writer.write_table(tbl)
    writer.done_writing()
    summary = json.loads(reader.read().to_pybytes())
    writer.close()
    return summary


def test_text_rows_are_embedded_and_found_by_text(model_server):
    client = flight.connect(model_server.url)
    [models] = action(client, "list_models", {})
    assert [m["name"] for m in models] == [MODEL]

    action(client, "create_table", {"name": "notes", "embedding_model": MODEL})
    texts = {
        "cat": "The cat slept on the warm mat by the fire.",
        "markets": "Stock markets fell sharply after the interest rate announcement.",
        "cake": "Whisk the eggs and sugar, then fold in the flour for the sponge cake.",
        "detective": "The detective knelt to examine the muddy footprints by the window.",
    }
    tbl = pa.table(
        {
            "id": list(texts),
            "data_type": ["text"] * len(texts),
            "raw_data": pa.array([t.encode() for t in texts.values()], pa.binary()),
            "metadata": [json.dumps({"n": i}) for i in range(len(texts))],
        }
    )
    summary = put(client, "notes", tbl)
    assert summary["inserted"] == 4 and summary["embedded"] == 4

    for query, expected in [
        ("a kitten napping on a rug", "cat"),
        ("how to bake a dessert", "cake"),
        ("an investigator looking for clues", "detective"),
        ("the economy and the stock exchange", "markets"),
    ]:
        ticket = flight.Ticket(json.dumps({"table": "notes", "text": query, "k": 2, "columns": ["id"]}).encode())
        result = client.do_get(ticket).read_all()
        assert result.column("id")[0].as_py() == expected, (query, result.to_pydict())
        assert result.schema.metadata[b"hyprstream.search_path"] == b"exact_cpu"

    # GetFlightInfo plans a text query (schema with _distance) without running it.
    cmd = json.dumps({"table": "notes", "text": "a cat", "k": 2, "columns": ["id"]}).encode()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(cmd))
    assert info.schema.names == ["id", "_distance"]
    assert client.do_get(info.endpoints[0].ticket).read_all().column("id")[0].as_py() == "cat"

    # Text on a table without a model: INVALID_ARGUMENT naming the fix.
    put(client, "plain", pa.table({"id": ["a"], "embedding": pa.array([[1.0, 0.0]], pa.list_(pa.float32(), 2))}))
    with pytest.raises(pa.ArrowInvalid, match="embedding_model"):
        client.do_get(flight.Ticket(json.dumps({"table": "plain", "text": "x"}).encode())).read_all()


def test_embed_ticket_and_models_table_from_python(model_server):
    client = flight.connect(model_server.url)
    ticket = {"embed": {"model": MODEL, "texts": ["Elementary, my dear Watson.", ""]}}
    result = client.do_get(flight.Ticket(json.dumps(ticket).encode())).read_all()
    vectors = np.array(result.column("embedding").to_pylist(), dtype=np.float64)
    assert vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    [json_result] = action(client, "embed", {"model": MODEL, "texts": ["Elementary, my dear Watson."]})
    assert np.allclose(json_result["embeddings"][0], vectors[0], atol=1e-6)

    # The models table is an ordinary table: its layer rows are safetensors blobs whose
    # tensors equal the original checkpoint's.
    models = client.do_get(flight.Ticket(json.dumps({"table": "models", "filter": "layer_id = 0"}).encode())).read_all()
    assert models.num_rows == 1
    stored = read_safetensors(models.column("weights")[0].as_py())
    with open(os.path.join(models_dir(), MODEL, "model.safetensors"), "rb") as f:
        original = read_safetensors(f.read())
    for name in ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight"]:
        assert np.array_equal(stored[name], original[name]), name
    meta = json.loads(models.column("metadata")[0].as_py())
    assert meta["config"]["hidden_size"] == 384 and meta["max_seq_length"] == 256

    with pytest.raises(pa.ArrowKeyError, match="not found"):
        client.do_get(flight.Ticket(json.dumps({"embed": {"model": "nope", "texts": ["x"]}}).encode())).read_all()
