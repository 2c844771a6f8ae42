//! Parsing of what clients put in Flight's opaque byte fields: tickets, command descriptors,
//! action bodies (all UTF-8 JSON, see `docs/protocol.md`).
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::FlightDescriptor;
use hyprstream_proto::actions::Embed;
use hyprstream_proto::{PutCommand, PutMode, Query};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Parses a JSON document; `what` names it in the error ("ticket", "action 'delete' body").
pub fn parse_json<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::invalid(format!("{what} is not UTF-8 JSON")))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| Error::invalid(format!("{what}: {e}")))
}

pub fn parse_query(what: &str, bytes: &[u8]) -> Result<Query> {
    parse_json(what, bytes)
}

/// What a DoGet ticket asks for: a scan or search, or `{"embed": {"model", "texts"}}`.
pub enum TicketRequest {
    Query(Query),
    Embed(Embed),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedTicket {
    embed: Embed,
}

/// Only whether a ticket has an `embed` key; everything else is skipped unparsed (a search
/// ticket's vector is decoded once, by the typed parse).
#[derive(serde::Deserialize)]
struct TicketKind {
    embed: Option<serde::de::IgnoredAny>,
}

pub fn parse_ticket(bytes: &[u8]) -> Result<TicketRequest> {
    const SHAPE: &str = "a ticket is a JSON object: {\"table\": T} scans a table, with \"vector\" it searches it (docs/protocol.md)";
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(format!("the ticket is empty; {SHAPE}")));
    }
    let kind: TicketKind = match parse_json("ticket", bytes) {
        Ok(kind) => kind,
        // Not an object at all (`[]`, `"x"`): serde would name the internal type it wanted.
        Err(_) if serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| !v.is_object()) => {
            return Err(Error::invalid(format!("the ticket is not a JSON object; {SHAPE}")));
        }
        Err(e) => return Err(e),
    };
    if kind.embed.is_some() {
        Ok(TicketRequest::Embed(parse_json::<EmbedTicket>("embed ticket", bytes)?.embed))
    } else {
        parse_query("ticket", bytes).map(TicketRequest::Query)
    }
}

/// What a descriptor names: a table (path), or a query (command).
pub enum Target {
    Table(String),
    Query(Query),
}

pub fn parse_descriptor(descriptor: &FlightDescriptor) -> Result<Target> {
    match descriptor.r#type() {
        DescriptorType::Path => Ok(Target::Table(single_path(descriptor)?)),
        DescriptorType::Cmd => Ok(Target::Query(parse_query("command descriptor", &descriptor.cmd)?)),
        DescriptorType::Unknown => Err(Error::invalid("descriptor type is UNKNOWN: use for_path(table) or for_command(JSON)")),
    }
}

fn single_path(descriptor: &FlightDescriptor) -> Result<String> {
    match descriptor.path.as_slice() {
        [table] => Ok(table.clone()),
        other => Err(Error::invalid(format!(
            "descriptor path must be exactly one table name, got {} elements",
            other.len()
        ))),
    }
}

/// The table and mode of a DoPut: `for_path(T)` upserts; `for_command({"table", "mode"})`.
pub fn parse_put_descriptor(descriptor: Option<&FlightDescriptor>) -> Result<PutCommand> {
    let descriptor = descriptor.ok_or_else(|| {
        Error::invalid("DoPut needs a FlightDescriptor on its first message: for_path(table) or for_command({\"table\", \"mode\"})")
    })?;
    match descriptor.r#type() {
        DescriptorType::Path => Ok(PutCommand { table: single_path(descriptor)?, mode: PutMode::Upsert, rows: None }),
        DescriptorType::Cmd => parse_json("DoPut command", &descriptor.cmd),
        DescriptorType::Unknown => Err(Error::invalid("DoPut descriptor type is UNKNOWN: use for_path(table) or for_command(JSON)")),
    }
}
