//! `hyprstream-search-bench DATA_DIR PASSES [WARM_TICKET] < tickets`: runs DoGet tickets (one
//! JSON ticket a line, as a client sends them) against the tables in DATA_DIR in this process:
//! what the server does for a DoGet (ticket decoding, planning, the search, the result batches)
//! without gRPC, IPC encoding or the network. `make bench-ann` sets it beside the in-process
//! peers (hnswlib, LanceDB), which run their queries in a loop the same way.
//!
//! Tickets come in groups separated by empty lines (one per `ef`, say). WARM_TICKET runs once
//! first (an exact search loads the table's in-memory engine, as in a server that has served
//! one). Each group runs one untimed pass, then PASSES timed passes. Prints a JSON array, one
//! object per group: `p50_ms` (each timed pass's median) and `ids` (each ticket's `id` column,
//! from the untimed pass). It only reads DATA_DIR, so a server may serve it meanwhile.
use std::io::BufRead;
use std::time::Instant;

use futures::TryStreamExt;
use hyprstream_server::service::TableService;
use hyprstream_server::store::Store;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (data_dir, passes, warm) = match args.as_slice() {
        [_, data_dir, passes] => (data_dir, passes, None),
        [_, data_dir, passes, warm] => (data_dir, passes, Some(warm)),
        _ => fail(USAGE.to_string()),
    };
    let passes: usize = passes.parse().unwrap_or_else(|_| fail(format!("PASSES must be a count, not '{passes}'")));
    // Groups of tickets, separated by empty lines (e.g. one group per `ef`).
    let mut groups: Vec<Vec<Vec<u8>>> = vec![Vec::new()];
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap_or_else(|e| fail(format!("reading tickets: {e}")));
        match line.trim().is_empty() {
            true if groups.last().is_some_and(|g| !g.is_empty()) => groups.push(Vec::new()),
            true => {}
            false => groups.last_mut().expect("one group at least").push(line.into_bytes()),
        }
    }
    groups.retain(|g| !g.is_empty());
    let store = Store::open(data_dir).unwrap_or_else(|e| fail(e.to_string()));
    let tables = TableService::new(store);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        if let Some(warm) = warm {
            run(&tables, warm.as_bytes()).await;
        }
        let mut out = Vec::with_capacity(groups.len());
        for tickets in &groups {
            // The warm-up pass loads what a server would have loaded by then (the index).
            let mut ids = Vec::with_capacity(tickets.len());
            for ticket in tickets {
                ids.push(run(&tables, ticket).await);
            }
            let mut p50_ms = Vec::with_capacity(passes);
            for _ in 0..passes {
                let mut ms = Vec::with_capacity(tickets.len());
                for ticket in tickets {
                    let started = Instant::now();
                    std::hint::black_box(run(&tables, ticket).await);
                    ms.push(started.elapsed().as_secs_f64() * 1e3);
                }
                ms.sort_by(f64::total_cmp);
                p50_ms.push(ms[ms.len() / 2]);
            }
            out.push(serde_json::json!({ "p50_ms": p50_ms, "ids": ids }));
        }
        println!("{}", serde_json::Value::Array(out));
    });
}

const USAGE: &str = "usage: hyprstream-search-bench DATA_DIR PASSES [WARM_TICKET] < tickets (one JSON DoGet ticket a line; an empty line starts a new group)";

/// One DoGet's work: the ticket parsed, the query run, its batches collected. Returns the
/// result's `id` column.
async fn run(tables: &TableService, ticket: &[u8]) -> Vec<String> {
    // The ticket's JSON, decoded as the server's ticket parser decodes a search ticket.
    let query: hyprstream_proto::Query = serde_json::from_slice(ticket).unwrap_or_else(|e| fail(format!("ticket: {e}")));
    let output = tables.query(&query).await.unwrap_or_else(|e| fail(e.to_string()));
    let batches: Vec<_> = output.batches.try_collect().await.unwrap_or_else(|e| fail(e.to_string()));
    let mut ids = Vec::new();
    for batch in &batches {
        let Some(column) = batch.column_by_name("id") else { continue };
        let column = arrow::compute::cast(column, &arrow_schema::DataType::Utf8).unwrap_or_else(|e| fail(e.to_string()));
        let column = column.as_any().downcast_ref::<arrow_array::StringArray>().expect("cast to Utf8");
        ids.extend(column.iter().map(|id| id.unwrap_or_default().to_string()));
    }
    ids
}

fn fail(message: String) -> ! {
    eprintln!("hyprstream-search-bench: {message}");
    std::process::exit(1);
}
