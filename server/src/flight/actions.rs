//! DoAction: action name + JSON body → a domain call → JSON result bodies.
use bytes::Bytes;
use hyprstream_proto::actions::{names, CreateTable, Delete, NoArgs, Restore, TableRef};
use hyprstream_proto::ACTIONS;

use super::encode::json_bytes;
use super::request::{parse_json, parse_query};
use crate::error::{Error, Result};
use crate::service::TableService;

/// Runs one action; each returned body is one Flight `Result` (most actions return one).
pub async fn run(tables: &TableService, name: &str, body: &[u8]) -> Result<Vec<Bytes>> {
    let what = format!("action '{name}' body");
    let result = match name {
        names::CREATE_TABLE => json_bytes(&tables.create_table(parse_json::<CreateTable>(&what, body)?).await?),
        names::DROP_TABLE => json_bytes(&tables.drop_table(&parse_json::<TableRef>(&what, body)?.name).await?),
        names::LIST_TABLES => {
            parse_json::<NoArgs>(&what, body)?;
            json_bytes(&tables.list_tables().await?)
        }
        names::DESCRIBE_TABLE => json_bytes(&tables.describe(&parse_json::<TableRef>(&what, body)?.name).await?),
        names::DELETE => json_bytes(&tables.delete(parse_json::<Delete>(&what, body)?).await?),
        names::SEARCH => json_bytes(&tables.search_hits(&parse_query(&what, body)?).await?),
        names::VERSIONS => json_bytes(&tables.versions(&parse_json::<TableRef>(&what, body)?.name).await?),
        names::RESTORE => json_bytes(&tables.restore(parse_json::<Restore>(&what, body)?).await?),
        names::HEALTH => {
            parse_json::<NoArgs>(&what, body)?;
            json_bytes(&tables.health()?)
        }
        other => Err(Error::invalid(format!(
            "unknown action '{other}'; available: {}",
            ACTIONS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        ))),
    }?;
    Ok(vec![result])
}
