"""`make bench-ann` (second part): IVF_PQ, recall@10 against latency, ours beside LanceDB.

The same data sets, queries and ground truth as bench/ann.py. IVF_PQ is Lance's compressed
index for tables past memory: √n partitions, one 8-bit code per `dim / SUB_WIDTH`-wide
sub-vector, searched by probing `nprobes` partitions and re-ranking `REFINE × k` candidates
with their full vectors (PQ distances alone cap recall far below 0.95). Ours: built with
`create_index` through our server from pyarrow and searched with tickets ("exact": false,
"nprobes", "refine") through Flight and in-process (hyprstream-search-bench, as in
bench/ann.py); LanceDB: the same index and search settings through lancedb. hnswlib has no
PQ index; its HNSW figures are in the section above. Writes the IVF_PQ section of
docs/benchmarks.md.
"""
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ann import K, at_recall, conditions, curve, curve_table, data_sets, in_process_curve, truth, write_section  # noqa: E402
from bench import b64, put_table, start_server  # noqa: E402

NPROBES = [1, 2, 4, 8, 16, 32, 64, 128]
REFINE = 10
# Sub-vector width in dimensions, as the server picks by default: 384 → 24 sub-vectors,
# 50 → 25 (LanceDB gets the same count).
SUB_WIDTHS = (16, 8, 4, 2, 1)
OURS, OURS_LOCAL, LANCEDB = "hyprstream IVF_PQ via Flight", "hyprstream IVF_PQ in-process", "LanceDB IVF_PQ"


def sub_vectors(dim):
    return next(dim // w for w in SUB_WIDTHS if dim % w == 0)


def partitions(n):
    return max(1, int(math.sqrt(n)))


def bench_ours(data, queries, exact, tmp):
    data_dir = os.path.join(tmp, "hs-pq")
    proc, c = start_server(data_dir)
    try:
        rows = pa.table({"id": [str(i) for i in range(len(data))],
                         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), data.shape[1])})
        put_table(c, "ann", rows, chunk=50000)
        body = {"table": "ann", "type": "ivf_pq", "num_partitions": partitions(len(data)), "num_sub_vectors": sub_vectors(data.shape[1])}
        t = time.perf_counter()
        list(c.do_action(flight.Action("create_index", json.dumps(body).encode())))
        build = time.perf_counter() - t
        # An exact search loads the in-memory engine: `refine` re-ranks there.
        warm = {"table": "ann", "vector": b64(queries[0]), "k": K, "columns": ["id"]}
        c.do_get(flight.Ticket(json.dumps(warm))).read_all()

        def ticket(q, nprobes):
            return {"table": "ann", "vector": b64(q), "k": K, "exact": False, "nprobes": nprobes, "refine": REFINE, "columns": ["id"]}

        def search(q, nprobes):
            return [int(i) for i in c.do_get(flight.Ticket(json.dumps(ticket(q, nprobes)))).read_all()["id"].to_pylist()]

        points = curve(search, queries, exact, values=NPROBES)
        local = in_process_curve(data_dir, ticket, queries, exact, 0, warm, values=NPROBES)
        return build, points, local
    finally:
        proc.terminate()
        proc.wait(30)


def bench_lancedb(data, queries, exact, tmp):
    import lancedb

    db = lancedb.connect(os.path.join(tmp, "lancedb-pq"))
    table = db.create_table("ann", pa.table({"id": np.arange(len(data)), "vector": pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), data.shape[1])}))
    t = time.perf_counter()
    table.create_index(metric="cosine", index_type="IVF_PQ", num_partitions=partitions(len(data)), num_sub_vectors=sub_vectors(data.shape[1]))
    build = time.perf_counter() - t

    def search(q, nprobes):
        query = table.search(q).metric("cosine").nprobes(nprobes).refine_factor(REFINE).limit(K)
        return query.select(["id", "_distance"]).to_arrow()["id"].to_pylist()

    return build, curve(search, queries, exact, values=NPROBES)


def main():
    lines = [conditions(f"√n partitions, refine {REFINE} (× k candidates re-ranked with full vectors); nprobes swept over {NPROBES}.")]
    for name, data, queries in data_sets():
        exact = truth(data, queries)
        with tempfile.TemporaryDirectory() as tmp:
            build, flight_points, local = bench_ours(data, queries, exact, tmp)
            results = {OURS: (build, flight_points), OURS_LOCAL: (build, local), LANCEDB: bench_lancedb(data, queries, exact, tmp)}
        heading = f"{name}: {len(data)} × {data.shape[1]}, {partitions(len(data))} partitions, {sub_vectors(data.shape[1])} sub-vectors"
        lines += curve_table(heading, results, "nprobes", NPROBES)
        lance = at_recall(results[LANCEDB][1])
        lines.append("")
        for engine in (OURS, OURS_LOCAL):
            ours = at_recall(results[engine][1])
            if ours and lance:
                lines.append(f"At recall ≥ 0.95, {engine}: {ours['p50_ms']:.2f} ms (nprobes {ours['ef']}), {lance['p50_ms'] / ours['p50_ms']:.2f}× faster than LanceDB "
                             f"({lance['p50_ms']:.2f} ms, nprobes {lance['ef']}).  ")
            else:
                # Not reached (the codes cap recall even after refine): compare at the widest probe.
                o, l = results[engine][1][-1], results[LANCEDB][1][-1]
                missed = " and ".join(name for name, point in ((engine, ours), (LANCEDB, lance)) if point is None)
                lines.append(f"Recall 0.95 not reached by {missed} within nprobes {NPROBES[-1]}. At nprobes {o['ef']}, {engine}: "
                             f"recall {o['recall']:.3f} in {o['p50_ms']:.2f} ms, {l['p50_ms'] / o['p50_ms']:.2f}× faster than LanceDB (recall {l['recall']:.3f} in {l['p50_ms']:.2f} ms).  ")
    table = "\n".join(lines)
    print(table)
    write_section("ann-pq", "ANN search, IVF_PQ (`make bench-ann`)", table, after="ann")


if __name__ == "__main__":
    main()
