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

/// Only whether a ticket has an `embed` key (even `null`: that is a malformed embed ticket,
/// not a query); everything else is skipped unparsed (a search ticket's vector is decoded
/// once, by the typed parse).
#[derive(serde::Deserialize)]
struct TicketKind {
    #[serde(default, deserialize_with = "present")]
    embed: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(value: D) -> std::result::Result<bool, D::Error> {
    serde::Deserialize::deserialize(value).map(|_: serde::de::IgnoredAny| true)
}

pub fn parse_ticket(bytes: &[u8]) -> Result<TicketRequest> {
    parse_request("ticket", bytes)
}

/// A ticket or a command descriptor (the same JSON); `what` names it in errors.
fn parse_request(what: &str, bytes: &[u8]) -> Result<TicketRequest> {
    let shape = || format!("a {what} is a JSON object: {{\"table\": T}} scans a table, with \"vector\" it searches it (docs/protocol.md)");
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(format!("the {what} is empty; {}", shape())));
    }
    // Not an object at all (`[]`, `"x"`): serde would name the internal type it wanted (or
    // read an array as a struct's fields).
    let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if !object && serde_json::from_slice::<serde_json::Value>(bytes).is_ok() {
        return Err(Error::invalid(format!("the {what} is not a JSON object; {}", shape())));
    }
    let kind: TicketKind = parse_json(what, bytes)?;
    if kind.embed {
        Ok(TicketRequest::Embed(parse_json::<EmbedTicket>(&format!("embed {what}"), bytes)?.embed))
    } else {
        parse_query(what, bytes).map(TicketRequest::Query)
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
        DescriptorType::Cmd => match parse_request("command descriptor", &descriptor.cmd)? {
            TicketRequest::Query(query) => Ok(Target::Query(query)),
            TicketRequest::Embed(_) => Err(Error::invalid(
                "command descriptor: an embed request has no FlightInfo or schema; send it as a DoGet ticket (docs/protocol.md, Bulk embedding)",
            )),
        },
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
