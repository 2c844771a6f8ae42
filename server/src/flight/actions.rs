//! DoAction: action name + JSON body → a domain call → JSON result bodies.
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;

use futures::stream::{self, BoxStream, StreamExt};
use hyprstream_proto::actions::{names, CreateIndex, CreateTable, Delete, Embed, ImportModel, ModelRef, NoArgs, Restore, TableRef};
use hyprstream_proto::{EmbedResult, IndexProgress, ACTIONS};

use super::encode::json_bytes;
use super::request::{parse_json, parse_query};
use crate::error::{Error, Result};
use crate::service::{TableService, CALLER_GONE};

/// Runs one action; each item of the stream is one Flight `Result`. Most actions answer
/// once; `create_index` reports `started` once the request is checked and `done` when the
/// build commits.
pub async fn run(tables: &Arc<TableService>, name: &str, body: &[u8]) -> Result<BoxStream<'static, Result<Bytes>>> {
    let what = format!("action '{name}' body");
    if name == names::CREATE_INDEX {
        return create_index(tables.clone(), parse_json::<CreateIndex>(&what, body)?).await;
    }
    if name == names::REEMBED {
        return Ok(reembed(tables.clone(), parse_json::<TableRef>(&what, body)?.name).await);
    }
    if name == names::IMPORT_MODEL {
        return Ok(import_model(tables.clone(), parse_json::<ImportModel>(&what, body)?).await);
    }
    let result = match name {
        names::CREATE_TABLE => {
            let req = parse_json::<CreateTable>(&what, body)?;
            json_bytes(&to_completion(tables, |t| async move { t.create_table(req).await }).await?)
        }
        names::DROP_TABLE => {
            let name = parse_json::<TableRef>(&what, body)?.name;
            json_bytes(&to_completion(tables, |t| async move { t.drop_table(&name).await }).await?)
        }
        names::LIST_TABLES => {
            parse_json::<NoArgs>(&what, body)?;
            json_bytes(&tables.list_tables().await?)
        }
        names::DESCRIBE_TABLE => json_bytes(&tables.describe(&parse_json::<TableRef>(&what, body)?.name).await?),
        names::DELETE => {
            let req = parse_json::<Delete>(&what, body)?;
            json_bytes(&to_completion(tables, |t| async move { t.delete(req).await }).await?)
        }
        names::SEARCH => json_bytes(&tables.search_hits(&parse_query(&what, body)?).await?),
        names::VERSIONS => json_bytes(&tables.versions(&parse_json::<TableRef>(&what, body)?.name).await?),
        names::RESTORE => {
            let req = parse_json::<Restore>(&what, body)?;
            json_bytes(&to_completion(tables, |t| async move { t.restore(req).await }).await?)
        }
        names::OPTIMIZE => {
            let name = parse_json::<TableRef>(&what, body)?.name;
            json_bytes(&to_completion(tables, |t| async move { t.optimize(&name).await }).await?)
        }
        names::LIST_MODELS => {
            parse_json::<NoArgs>(&what, body)?;
            json_bytes(&tables.list_models().await?)
        }
        names::DESCRIBE_MODEL => json_bytes(&tables.describe_model(&parse_json::<ModelRef>(&what, body)?.name).await?),
        names::DROP_MODEL => {
            let name = parse_json::<ModelRef>(&what, body)?.name;
            json_bytes(&to_completion(tables, |t| async move { t.drop_model(&name).await }).await?)
        }
        names::EMBED => {
            let req = parse_json::<Embed>(&what, body)?;
            let (encoder, embeddings) = tables.embed_texts(&req).await?;
            json_bytes(&EmbedResult { model: req.model, version: encoder.version.clone(), dim: encoder.dim, embeddings })
        }
        names::HEALTH => {
            parse_json::<NoArgs>(&what, body)?;
            json_bytes(&tables.health()?)
        }
        other => Err(Error::invalid(format!(
            "unknown action '{other}'; available: {}",
            ACTIONS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        ))),
    }?;
    Ok(stream::once(async { Ok(result) }).boxed())
}

/// Runs a write in a task of its own, so once begun (once it holds its table's write lock) it
/// reaches its commit and the server's record of it even if the client goes away: tonic drops
/// a cancelled call's handler, which could otherwise stop between Lance's commit and that
/// record. One whose client is gone before it begins never begins (`CALLER_GONE`). Shutdown
/// waits for it (`drain_writes`).
pub(super) async fn to_completion<T, F>(tables: &Arc<TableService>, write: impl FnOnce(Arc<TableService>) -> F) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let (task, _gone_on_drop) = detached(tables, write).await;
    task.await.unwrap_or_else(|e| Err(Error::internal(format!("write task failed: {e}"))))
}

/// Marks the write's caller as gone when the request's handler is dropped.
pub(super) struct GoneOnDrop(Arc<AtomicBool>);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Spawns `write` as a detached write (see `to_completion`); the guard must live as long as the
/// request does.
async fn detached<T, F>(tables: &Arc<TableService>, write: impl FnOnce(Arc<TableService>) -> F) -> (JoinHandle<Result<T>>, GoneOnDrop)
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let pass = tables.write_pass().await;
    let gone = Arc::new(AtomicBool::new(false));
    let write = CALLER_GONE.scope(gone.clone(), write(tables.clone()));
    let task = tokio::spawn(async move {
        let _pass = pass;
        write.await
    });
    (task, GoneOnDrop(gone))
}

/// `create_index` streams `started` once the request is checked (a refused one ends the call
/// with its status and nothing before it), then `done`. Once `started`, the build runs to its
/// commit even if the client goes away (it is several commits when it replaces an index).
async fn create_index(tables: Arc<TableService>, req: CreateIndex) -> Result<BoxStream<'static, Result<Bytes>>> {
    let started = json_bytes(&IndexProgress { stage: "started".into(), table: req.table.clone(), index: None, version: None, seconds: 0.0 })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (task, gone_on_drop) = detached(&tables, move |tables| async move {
        let (index, version, seconds) = tables.create_index(req.clone(), move || drop(tx.send(started))).await?;
        json_bytes(&IndexProgress { stage: "done".into(), table: req.table, index: Some(index), version: Some(version), seconds })
    })
    .await;
    // `started` if the build began (the sender is dropped unused when the request is refused).
    let progress = stream::once(rx).filter_map(|sent| async move { sent.ok().map(Ok) });
    let outcome = stream::once(async move {
        let _gone_on_drop = gone_on_drop;
        task.await.unwrap_or_else(|e| Err(Error::internal(format!("index build task failed: {e}"))))
    });
    Ok(progress.chain(outcome).boxed())
}

/// `reembed` streams `started` (with the number of rows to re-embed), `progress` after each
/// committed chunk, then `done`; a failure ends the stream with its status (chunks committed
/// before it stay). A client that goes away stops it before its next chunk.
async fn reembed(tables: Arc<TableService>, table: String) -> BoxStream<'static, Result<Bytes>> {
    let work = move |t: Arc<TableService>, tx| async move { t.reembed(&table, tx).await };
    progress_stream(&tables, "re-embedding", work, |done| Some(json_bytes(&done))).await
}

/// `import_model` streams `reading`, one `layer` per layer, then `done`; a failure ends the
/// stream with its status. Once begun, the import runs to its commit even if the client goes
/// away.
async fn import_model(tables: Arc<TableService>, req: ImportModel) -> BoxStream<'static, Result<Bytes>> {
    let work = move |t: Arc<TableService>, tx| async move { t.import_model(req, tx).await };
    progress_stream(&tables, "import", work, |_| None).await
}

/// A detached write (see `to_completion`) that reports progress on a channel: the stream is
/// its messages, then what `last` makes of its result; a failure ends it with its status.
async fn progress_stream<P, T, F>(
    tables: &Arc<TableService>,
    what: &'static str,
    work: impl FnOnce(Arc<TableService>, tokio::sync::mpsc::Sender<P>) -> F,
    last: fn(T) -> Option<Result<Bytes>>,
) -> BoxStream<'static, Result<Bytes>>
where
    P: serde::Serialize + Send + 'static,
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (task, gone_on_drop) = detached(tables, move |t| work(t, tx)).await;
    let progress = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|p| (json_bytes(&p), rx)) });
    let outcome = stream::once(async move {
        let _gone_on_drop = gone_on_drop;
        match task.await {
            Ok(Ok(done)) => last(done),
            Ok(Err(e)) => Some(Err(e)),
            Err(e) => Some(Err(Error::internal(format!("{what} task failed: {e}")))),
        }
    })
    .filter_map(|item| async move { item });
    progress.chain(outcome).boxed()
}
