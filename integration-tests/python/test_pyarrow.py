"""The server through nothing but pyarrow.flight, as a Python user drives it."""
import base64
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIM = 16


def make_table(n, dim=DIM, prefix="r", seed=None):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    return vecs, pa.table(
        {
            "id": [f"{prefix}-{i}" for i in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), dim),
            "data_type": ["text"] * n,
            "raw_data": [f"passage {i}".encode() for i in range(n)],
            "metadata": pa.array([json.dumps({"chapter": i % 4, "story": "A Study in Scarlet"}) for i in range(n)], pa.json_()),
        }
    )


def put(client, name, table):
    w, r = client.do_put(flight.FlightDescriptor.for_path(name), table.schema)
    w.write_table(table)
    w.done_writing()
    result = r.read()
    w.close()  # raises the server's error, if the put was refused
    return json.loads(result.to_pybytes())


def get(client, ticket):
    return client.do_get(flight.Ticket(json.dumps(ticket))).read_all()


def action(client, name, body):
    return [json.loads(r.body.to_pybytes()) for r in client.do_action(flight.Action(name, json.dumps(body).encode()))]


def cosine_topk(vecs, ids, q, k, mask=None):
    d = 1.0 - (vecs.astype(np.float64) @ q) / (np.linalg.norm(vecs.astype(np.float64), axis=1) * np.linalg.norm(q))
    order = [i for i in np.argsort(d, kind="stable") if mask is None or mask[i]]
    return [ids[i] for i in order[:k]], [d[i] for i in order[:k]]


def test_put_scan_search_round_trip(server):
    c = flight.connect(server.url)
    vecs, table = make_table(300, seed=1)
    summary = put(c, "sherlock_data", table)
    assert summary == {"table": "sherlock_data", "inserted": 300, "updated": 0, "version": summary["version"]}

    scanned = get(c, {"table": "sherlock_data"})
    assert scanned.num_rows == 300
    assert scanned.schema.field("metadata").type == pa.json_()
    assert scanned.schema.field("embedding").type == pa.list_(pa.float32(), DIM)

    q = np.random.default_rng(2).standard_normal(DIM).astype(np.float32)
    rows = get(c, {"table": "sherlock_data", "vector": q.tolist(), "k": 5})
    want_ids, want_d = cosine_topk(vecs, table["id"].to_pylist(), q.astype(np.float64), 5)
    assert rows["id"].to_pylist() == want_ids
    np.testing.assert_allclose(rows["_distance"].to_numpy(), want_d, rtol=1e-4, atol=1e-5)
    assert rows.schema.metadata[b"hyprstream.search_path"] == b"exact_cpu"

    # Filter on a metadata key, applied before ranking.
    rows = get(c, {"table": "sherlock_data", "vector": q.tolist(), "k": 5, "filter": "json_get_int(metadata, 'chapter') = 2"})
    mask = [i % 4 == 2 for i in range(300)]
    want_ids, _ = cosine_topk(vecs, table["id"].to_pylist(), q.astype(np.float64), 5, mask)
    assert rows["id"].to_pylist() == want_ids

    # A batch of queries in one ticket: one table, `_query` says which query a row answers.
    qs = np.random.default_rng(3).standard_normal((8, DIM)).astype(np.float32)
    rows = get(c, {"table": "sherlock_data", "vectors": qs.tolist(), "k": 4, "columns": ["id"]})
    assert rows.column_names == ["id", "_distance", "_query"]
    assert rows["_query"].to_pylist() == [i for i in range(8) for _ in range(4)]
    for i, qi in enumerate(qs):
        want_ids, want_d = cosine_topk(vecs, table["id"].to_pylist(), qi.astype(np.float64), 4)
        assert rows["id"].to_pylist()[i * 4 : i * 4 + 4] == want_ids
        np.testing.assert_allclose(rows["_distance"].to_numpy()[i * 4 : i * 4 + 4], want_d, rtol=1e-4, atol=1e-5)

    # The same queries as base64 float32 bytes (what programs should send): identical answers.
    b64 = lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
    rows_b64 = get(c, {"table": "sherlock_data", "vectors": [b64(qi) for qi in qs], "k": 4, "columns": ["id"]})
    assert rows_b64.equals(rows)
    single = get(c, {"table": "sherlock_data", "vector": b64(q), "k": 5})
    assert single.equals(get(c, {"table": "sherlock_data", "vector": q.tolist(), "k": 5}))
    with pytest.raises(pa.ArrowInvalid, match="not a whole number of float32"):
        get(c, {"table": "sherlock_data", "vector": base64.b64encode(b"12345").decode()})


def test_python_lists_and_pandas_style_input_are_accepted(server):
    c = flight.connect(server.url)
    table = pa.table(
        {
            "id": ["a", "b"],
            "embedding": [[1.0, 0.0], [0.0, 1.0]],  # list<double>, as pyarrow infers
            "data_type": ["text", "image"],
            "raw_data": [b"hello", b"\x89PNG"],
            "metadata": ['{"chapter": 1}', '{"chapter": 2}'],  # utf8 holding JSON
        }
    )
    assert put(c, "plain", table)["inserted"] == 2
    rows = get(c, {"table": "plain", "vector": [0.1, 0.9], "k": 1})
    assert rows["id"].to_pylist() == ["b"]
    assert rows["raw_data"].to_pylist() == [b"\x89PNG"]


def test_errors_map_to_pyarrow_exceptions(server):
    c = flight.connect(server.url)
    _, table = make_table(5)
    put(c, "t", table)
    # pyarrow maps NOT_FOUND to ArrowKeyError, INVALID_ARGUMENT to ArrowInvalid,
    # ALREADY_EXISTS to ArrowException ("already exists"), UNIMPLEMENTED to ArrowNotImplementedError.
    with pytest.raises(pa.ArrowKeyError, match="table 'missing' does not exist"):
        get(c, {"table": "missing"})
    with pytest.raises(pa.ArrowException, match="already exists"):
        action(c, "create_table", {"name": "t", "dim": 3})
    with pytest.raises(pa.ArrowNotImplementedError, match="DoExchange is not offered"):
        writer, reader = c.do_exchange(flight.FlightDescriptor.for_path("t"))
        reader.read_all()
    with pytest.raises(pa.ArrowInvalid, match="dim 16"):
        get(c, {"table": "t", "vector": [1.0, 2.0]})
    with pytest.raises(pa.ArrowInvalid, match="unknown field `vectr`"):
        get(c, {"table": "t", "vectr": [1.0]})
    with pytest.raises(pa.ArrowInvalid, match="expected a vector: an array of numbers or a base64 string"):  # "vectors" is a list of vectors
        get(c, {"table": "t", "vectors": [1.0]})
    bad = table.set_column(2, "data_type", pa.array(["text", "text", "audio", "text", "text"]))
    with pytest.raises(pa.ArrowInvalid, match="'text' or 'image'"):
        put(c, "t", bad)
    assert get(c, {"table": "t"}).num_rows == 5


def test_a_table_dropped_during_a_read_says_so(server):
    """A scan still streaming when its table is dropped either finishes (its files were open)
    or fails as NOT_FOUND saying the table was dropped, never with the server's file paths."""
    c = flight.connect(server.url)
    blob = os.urandom(1 << 20)
    for part in range(4):
        put(c, "big", pa.table({"id": [f"{part}-{i}" for i in range(40)], "raw_data": pa.array([blob] * 40, pa.large_binary())}))
    reader = c.do_get(flight.Ticket(json.dumps({"table": "big"})))
    rows = reader.read_chunk().data.num_rows
    action(c, "drop_table", {"name": "big"})
    try:
        for chunk in reader:
            rows += chunk.data.num_rows
        assert rows == 160
    except pa.ArrowException as e:
        assert "the table was dropped while this read was in progress" in str(e), str(e)
        assert ".lance" not in str(e), str(e)
    # The server still serves.
    assert action(c, "list_tables", {}) == [[]]


def test_actions_and_listing(server):
    c = flight.connect(server.url)
    types = {a.type for a in c.list_actions()}
    assert {"create_table", "search", "delete", "versions", "restore", "health"} <= types
    action(c, "create_table", {"name": "made", "dim": 3, "metric": "l2"})
    desc = action(c, "describe_table", {"name": "made"})[0]
    assert desc["dim"] == 3 and desc["metric"] == "l2" and desc["rows"] == 0
    vecs, table = make_table(20)
    put(c, "t", table)
    hits = action(c, "search", {"table": "t", "vector": vecs[7].tolist(), "k": 3})[0]
    assert hits[0]["id"] == "r-7" and hits[0]["metadata"]["chapter"] == 3
    deleted = action(c, "delete", {"table": "t", "filter": "id = 'r-7'"})[0]
    assert deleted["deleted"] == 1
    versions = action(c, "versions", {"table": "t"})[0]
    action(c, "restore", {"table": "t", "version": versions[0]["version"]})
    assert get(c, {"table": "t"}).num_rows == 20
    infos = {tuple(f.descriptor.path): f.total_records for f in c.list_flights()}
    assert infos == {(b"made",): 0, (b"t",): 20}
    info = c.get_flight_info(flight.FlightDescriptor.for_path("t"))
    assert info.schema.field("id").type == pa.string()
    assert c.do_get(info.endpoints[0].ticket).read_all().num_rows == 20


def test_quickstart_example_runs(server):
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "python", "quickstart.py")],
        env={**os.environ, "HYPRSTREAM_URL": server.url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "nearest" in out.stdout


def test_a_compressed_put_counts_its_decoded_size(tmp_path):
    """--max-put-bytes bounds what a put holds in memory: a zstd-compressed stream is counted as
    decoded, not as the few bytes it takes on the wire."""
    from conftest import Server

    s = Server(str(tmp_path), ["--max-put-bytes", "1000000"])
    try:
        c = flight.connect(s.url)
        zstd = flight.FlightCallOptions(write_options=pa.ipc.IpcWriteOptions(compression="zstd"))

        def put_compressed(name, table):
            w, r = c.do_put(flight.FlightDescriptor.for_path(name), table.schema, options=zstd)
            for batch in table.to_batches(max_chunksize=20):
                w.write_batch(batch)
            w.done_writing()
            r.read()
            w.close()

        _, small = make_table(10)
        put_compressed("z", small)  # decoded as it should be
        assert get(c, {"table": "z"}).num_rows == 10
        # 200 rows of 10 kB of zeros: 2 MB decoded, a few kB compressed.
        _, big = make_table(200, prefix="big")
        big = big.set_column(3, "raw_data", pa.array([bytes(10_000)] * 200, pa.binary()))
        with pytest.raises(pa.ArrowException, match="split the rows into several puts"):
            put_compressed("z", big)
        assert get(c, {"table": "z"}).num_rows == 10  # nothing of the refused put was written
    finally:
        s.stop()


def test_a_put_that_ends_short_of_its_row_count_writes_nothing(server):
    """pyarrow ends the stream normally when its writer is closed, even from a `with` block
    whose body raised: with "rows" in the descriptor the server sees the put is short and
    refuses it."""
    c = flight.connect(server.url)
    _, table = make_table(20)
    put(c, "t", table.slice(0, 5))
    counted = flight.FlightDescriptor.for_command(json.dumps({"table": "t", "rows": 20}))
    # Closing the writer on the way out of the `with` block ends the stream: the server's
    # refusal is what the caller then sees.
    with pytest.raises(pa.ArrowInvalid, match="says 20 rows and the stream carried 10"):
        w, r = c.do_put(counted, table.schema)
        with w:
            w.write_batch(table.slice(0, 10).to_batches()[0])
            raise RuntimeError("the source failed after 10 rows")
    assert get(c, {"table": "t"}).num_rows == 5, "the short put was not committed"
    with pytest.raises(pa.ArrowInvalid, match="says 20 rows and the stream carried 10"):
        w, r = c.do_put(counted, table.schema)
        w.write_table(table.slice(0, 10))
        w.done_writing()
        r.read()
        w.close()
    # The full count goes in.
    w, r = c.do_put(counted, table.schema)
    w.write_table(table)
    w.done_writing()
    assert json.loads(r.read().to_pybytes())["inserted"] == 15
    w.close()
    assert get(c, {"table": "t"}).num_rows == 20
