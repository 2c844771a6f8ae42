//! `hyprstream`: command-line client for the Hyprstream Flight server.
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use clap::{Parser, Subcommand};
use hyprstream_client::proto::{Metric, PutMode, Query};
use hyprstream_client::{HyprstreamClient, Rows};

#[derive(Parser, Debug)]
#[command(name = "hyprstream", version, about = "Client for the Hyprstream Flight server")]
struct Cli {
    /// Server address.
    #[arg(long, global = true, env = "HYPRSTREAM_URL", default_value = "grpc://127.0.0.1:50051")]
    url: String,
    /// Print rows as JSON lines (and action results as compact JSON).
    #[arg(long, global = true)]
    json: bool,
    /// Write result rows to this Parquet file instead of printing them.
    #[arg(long, global = true, value_name = "FILE")]
    parquet: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List tables.
    Tables,
    /// Show a table's schema, rows, dim, metric and versions.
    Describe { table: String },
    /// Create an empty multimodal table: give --dim, or --embedding-model to have the server
    /// embed text rows and text queries (dim taken from the model).
    Create {
        table: String,
        #[arg(long, required_unless_present = "embedding_model")]
        dim: Option<usize>,
        #[arg(long, conflicts_with = "dim")]
        embedding_model: Option<String>,
        #[arg(long, default_value = "cosine")]
        metric: String,
    },
    /// Drop a table and all its versions.
    Drop { table: String },
    /// Write rows from a Parquet, CSV or JSON-lines file (one commit).
    Put {
        table: String,
        file: PathBuf,
        /// upsert (default), append or overwrite.
        #[arg(long, default_value = "upsert")]
        mode: String,
    },
    /// Read rows.
    Scan {
        table: String,
        #[arg(long)]
        filter: Option<String>,
        /// Comma-separated column names.
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        #[arg(long)]
        limit: Option<u64>,
        #[arg(long)]
        version: Option<u64>,
    },
    /// k-nearest-neighbour search.
    Search {
        table: String,
        /// Comma-separated floats.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true, conflicts_with = "vector_file")]
        vector: Option<Vec<f32>>,
        /// A file holding the vector as a JSON array or whitespace/comma-separated floats; a
        /// JSON array of arrays is a batch (one search, rows tagged with `_query`).
        #[arg(long, conflicts_with = "text")]
        vector_file: Option<PathBuf>,
        /// Search by text (the table's embedding model embeds it).
        #[arg(long, conflicts_with = "vector")]
        text: Option<String>,
        #[arg(short, long, default_value_t = 10)]
        k: usize,
        #[arg(long)]
        filter: Option<String>,
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        #[arg(long)]
        metric: Option<String>,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete the rows matching a filter.
    Delete {
        table: String,
        #[arg(long)]
        filter: String,
    },
    /// List a table's versions.
    Versions { table: String },
    /// Make an earlier version the latest.
    Restore { table: String, version: u64 },
    /// Server health.
    Health,
    /// List the server's actions.
    Actions,
    /// Run any action with a JSON body.
    Action {
        name: String,
        #[arg(default_value = "{}")]
        body: String,
    },
}

fn parse_metric(s: &str) -> Result<Metric> {
    Metric::parse(s).with_context(|| format!("unknown metric '{s}': use cosine, dot or l2"))
}

fn parse_mode(s: &str) -> Result<PutMode> {
    Ok(match s {
        "upsert" => PutMode::Upsert,
        "append" => PutMode::Append,
        "overwrite" => PutMode::Overwrite,
        other => bail!("unknown mode '{other}': use upsert, append or overwrite"),
    })
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut client = HyprstreamClient::connect(&cli.url).await?;
    let out = Output { json: cli.json, parquet: cli.parquet.clone() };
    match cli.command {
        Command::Tables => {
            let tables = client.list_tables().await?;
            if out.json {
                return out.value(&tables);
            }
            println!("{:<32} {:>12} {:>8}", "table", "rows", "version");
            for t in tables {
                println!("{:<32} {:>12} {:>8}", t.name, t.rows, t.version);
            }
        }
        Command::Describe { table } => out.value(&client.describe_table(&table).await?)?,
        Command::Create { table, dim, embedding_model, metric } => {
            let metric = parse_metric(&metric)?;
            match (dim, embedding_model) {
                (_, Some(model)) => out.value(&client.create_table_with_model(&table, &model, metric).await?)?,
                (Some(dim), None) => out.value(&client.create_table(&table, dim, metric).await?)?,
                (None, None) => bail!("give --dim N or --embedding-model NAME"),
            }
        }
        Command::Drop { table } => out.value(&client.drop_table(&table).await?)?,
        Command::Put { table, file, mode } => {
            let (schema, batches) = read_file(&file)?;
            let sent = Arc::new(AtomicUsize::new(0));
            let counter = sent.clone();
            let stream = futures::stream::iter(batches.map(move |b| {
                let b = b?;
                let total = counter.fetch_add(b.num_rows(), Ordering::Relaxed) + b.num_rows();
                eprint!("\rsent {total} rows");
                Ok(b)
            }));
            let summary = client.put_stream(&table, parse_mode(&mode)?, schema, stream).await;
            eprintln!();
            let summary = summary?;
            out.value(&summary)?;
        }
        Command::Scan { table, filter, columns, limit, version } => {
            let q = Query { table, filter, columns, limit, version, ..Default::default() };
            out.rows(client.query(&q).await?)?
        }
        Command::Search { table, vector, vector_file, text, k, filter, columns, metric, version } => {
            let (vector, vectors) = match (vector, vector_file, &text) {
                (Some(v), _, _) => (Some(v), None),
                (None, Some(path), _) => match read_vectors(&path)? {
                    QueryVectors::One(v) => (Some(v), None),
                    QueryVectors::Batch(vs) => (None, Some(vs)),
                },
                (None, None, Some(_)) => (None, None),
                (None, None, None) => bail!("give the query as --vector 0.1,0.2,…, --vector-file FILE or --text \"…\""),
            };
            for v in vector.iter().chain(vectors.iter().flatten()) {
                check_finite(v)?;
            }
            let metric = metric.as_deref().map(parse_metric).transpose()?;
            let q = Query { table, filter, columns, version, vector, vectors, text, k: Some(k), metric, ..Default::default() };
            out.rows(client.query(&q).await?)?
        }
        Command::Delete { table, filter } => out.value(&client.delete(&table, &filter).await?)?,
        Command::Versions { table } => out.value(&client.versions(&table).await?)?,
        Command::Restore { table, version } => out.value(&client.restore(&table, version).await?)?,
        Command::Health => out.value(&client.health().await?)?,
        Command::Actions => {
            for a in client.list_actions().await? {
                println!("{:<16} {}", a.r#type, a.description);
            }
        }
        Command::Action { name, body } => {
            for result in client.action_raw(&name, body.into_bytes()).await? {
                match serde_json::from_slice::<serde_json::Value>(&result) {
                    Ok(v) => out.value(&v)?,
                    Err(_) => println!("{}", String::from_utf8_lossy(&result)),
                }
            }
        }
    }
    Ok(())
}

struct Output {
    json: bool,
    parquet: Option<PathBuf>,
}

impl Output {
    fn value<T: serde::Serialize>(&self, v: &T) -> Result<()> {
        let text = if self.json { serde_json::to_string(v)? } else { serde_json::to_string_pretty(v)? };
        println!("{text}");
        Ok(())
    }

    fn rows(&self, rows: Rows) -> Result<()> {
        if let Some(path) = &self.parquet {
            let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, rows.schema.clone(), None)?;
            for b in &rows.batches {
                writer.write(b)?;
            }
            writer.close()?;
            eprintln!("wrote {} rows to {}", rows.num_rows(), path.display());
        } else if self.json {
            for b in &rows.batches {
                for line in json_lines(b)? {
                    println!("{line}");
                }
            }
        } else {
            println!("{}", arrow::util::pretty::pretty_format_batches(&rows.batches)?);
            eprintln!("{} rows", rows.num_rows());
        }
        Ok(())
    }
}

/// A batch as JSON lines, keys in column order (what Arrow's writer gives, but for binary
/// columns: their hex form would be put back as the hex text itself). `raw_data` is written as
/// text when it is UTF-8 (it is a text row's text), other binary values as `{"base64": "…"}`;
/// `put` reads both back to the same bytes.
fn json_lines(batch: &RecordBatch) -> Result<Vec<String>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::DataType;
    let mut writer = arrow::json::LineDelimitedWriter::new(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let text = String::from_utf8(writer.into_inner())?;
    let rows: Vec<serde_json::Map<String, serde_json::Value>> =
        text.lines().map(serde_json::from_str).collect::<std::result::Result<_, _>>()?;
    let schema = batch.schema();
    let mut lines = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let mut out = String::from("{");
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            let bytes = match field.data_type() {
                _ if column.is_null(i) => None,
                DataType::Binary => Some(column.as_binary::<i32>().value(i)),
                DataType::LargeBinary => Some(column.as_binary::<i64>().value(i)),
                _ => None,
            };
            let value = match bytes {
                Some(bytes) => binary_json(bytes, field.name() == "raw_data"),
                // Arrow's writer leaves nulls out; so does this.
                None => match row.get(field.name()) {
                    Some(v) => v.clone(),
                    None => continue,
                },
            };
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(field.name())?);
            out.push(':');
            out.push_str(&serde_json::to_string(&value)?);
                    }
        out.push('}');
        lines.push(out);
    }
    Ok(lines)
}

/// Bytes as JSON: text if `as_text` and they are UTF-8, else `{"base64": "…"}`.
fn binary_json(bytes: &[u8], as_text: bool) -> serde_json::Value {
    use base64::Engine as _;
    match std::str::from_utf8(bytes) {
        Ok(text) if as_text => serde_json::Value::String(text.to_string()),
        _ => serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) }),
    }
}

/// Whether a JSON value is the `{"base64": "…"}` form of bytes.
fn is_base64_object(value: &serde_json::Value) -> bool {
    value.as_object().is_some_and(|o| o.len() == 1 && o.get("base64").is_some_and(serde_json::Value::is_string))
}

/// A binary column's value as JSON-lines input gives it: text (stored as its UTF-8 bytes),
/// `{"base64": "…"}` (any bytes), or null.
fn binary_from_json(value: &serde_json::Value, line: usize) -> Result<Option<Vec<u8>>> {
    use base64::Engine as _;
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(text) => Ok(Some(text.clone().into_bytes())),
        serde_json::Value::Object(o) if o.len() == 1 && o.get("base64").is_some_and(|b| b.is_string()) => {
            let text = o["base64"].as_str().expect("checked");
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map(Some)
                .with_context(|| format!("line {line}: \"base64\" is not base64"))
        }
        other => bail!("line {line}: a binary value must be text, {{\"base64\": \"…\"}} or null, got {other}"),
    }
}

/// A JSON value read as the server reads `metadata`: a key twice in one object is an error
/// (serde_json would keep the last one, silently changing what is stored).
struct StrictJson(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictJson)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items.into())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some((key, StrictJson(value))) = map.next_entry::<String, StrictJson>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("key '{key}' appears twice in one object")));
            }
            object.insert(key, value);
        }
        Ok(object.into())
    }
}

/// Inferred types with the all-null columns (Arrow's `Null` type) read as text: a column
/// empty in this file must not fix its type as Null for the table.
fn nulls_as_text(schema: arrow::datatypes::Schema) -> SchemaRef {
    use arrow::datatypes::{DataType, Field};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Null => Field::new(f.name(), DataType::Utf8, true),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone()))
}

type Batches = Box<dyn Iterator<Item = hyprstream_client::Result<RecordBatch>> + Send>;

/// Opens a Parquet (.parquet), CSV (.csv) or JSON-lines (.json, .jsonl, .ndjson) file.
fn read_file(path: &Path) -> Result<(SchemaRef, Batches)> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let map = |r: std::result::Result<RecordBatch, arrow::error::ArrowError>| r.map_err(Into::into);
    match ext.as_str() {
        "parquet" => {
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?.build()?;
            Ok((reader.schema(), Box::new(reader.map(map))))
        }
        "csv" => {
            // Types are inferred from every line: a value late in the file must not be cut to
            // a type guessed from the first ones.
            let mut file = file;
            let (schema, _) = arrow::csv::reader::Format::default().with_header(true).infer_schema(&mut file, None)?;
            file.seek(SeekFrom::Start(0))?;
            let schema = nulls_as_text(schema);
            let reader = arrow::csv::ReaderBuilder::new(schema.clone()).with_header(true).build(file)?;
            Ok((schema, Box::new(reader.map(map))))
        }
        "json" | "jsonl" | "ndjson" => {
            // A JSON object in `metadata` is sent as JSON text (the column's stored form),
            // rather than as the struct Arrow's reader would infer. Binary columns (`raw_data`,
            // and any column with a `{"base64": …}` value, as `scan --json` writes them) are
            // taken out and made binary columns (see `binary_from_json`).
            let mut objects = Vec::new();
            for (number, line) in BufReader::new(file).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let value = serde_json::from_str::<StrictJson>(&line).with_context(|| format!("line {}", number + 1))?.0;
                let serde_json::Value::Object(mut object) = value else { bail!("line {}: not a JSON object", number + 1) };
                if let Some(m) = object.get_mut("metadata") {
                    if !m.is_string() && !m.is_null() {
                        *m = serde_json::Value::String(m.to_string());
                    }
                }
                objects.push((number + 1, object));
            }
            let mut binary: Vec<String> = vec!["raw_data".to_string()];
            for (_, object) in &objects {
                for (key, value) in object {
                    if key != "metadata" && is_base64_object(value) && !binary.contains(key) {
                        binary.push(key.clone());
                    }
                }
            }
            binary.retain(|key| objects.iter().any(|(_, o)| o.contains_key(key)));
            let mut binary_columns: Vec<Vec<Option<Vec<u8>>>> = vec![Vec::with_capacity(objects.len()); binary.len()];
            let mut lines = Vec::with_capacity(objects.len());
            for (number, mut object) in objects {
                for (key, column) in binary.iter().zip(&mut binary_columns) {
                    column.push(match object.remove(key) {
                        Some(v) => binary_from_json(&v, number)?,
                        None => None,
                    });
                }
                lines.push(serde_json::Value::Object(object).to_string());
            }
            let data = lines.join("\n");
            // Every line counts for the types (a field first seen late is not dropped), and
            // the reader is strict, so nothing the schema lacks is silently left out.
            let (schema, _) = arrow::json::reader::infer_json_schema_from_seekable(Cursor::new(data.as_bytes()), None)?;
            let schema = nulls_as_text(schema);
            let reader = arrow::json::ReaderBuilder::new(schema.clone()).with_strict_mode(true).build(Cursor::new(data.into_bytes()))?;
            let mut full = schema.fields().iter().map(|f| f.as_ref().clone()).collect::<Vec<_>>();
            full.extend(binary.iter().map(|name| arrow::datatypes::Field::new(name, arrow::datatypes::DataType::LargeBinary, true)));
            let full = Arc::new(arrow::datatypes::Schema::new(full));
            let out = full.clone();
            let mut done = 0usize;
            // The binary columns are cut to each batch Arrow's reader yields.
            let batches = reader.map(move |batch| -> hyprstream_client::Result<RecordBatch> {
                let batch = batch?;
                let rows = batch.num_rows();
                let mut columns = batch.columns().to_vec();
                for column in &binary_columns {
                    columns.push(Arc::new(arrow::array::LargeBinaryArray::from_iter(column[done..done + rows].iter().cloned())));
                }
                done += rows;
                let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
                Ok(RecordBatch::try_new_with_options(out.clone(), columns, &options)?)
            });
            Ok((full, Box::new(batches)))
        }
        other => bail!("cannot read '.{other}' files: use .parquet, .csv or .jsonl"),
    }
}

enum QueryVectors {
    One(Vec<f32>),
    Batch(Vec<Vec<f32>>),
}

/// A query file: a JSON array of floats or of arrays (a batch), or bare floats.
fn read_vectors(path: &Path) -> Result<QueryVectors> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(v) = serde_json::from_str::<Vec<f32>>(&text) {
        return Ok(QueryVectors::One(v));
    }
    if let Ok(vs) = serde_json::from_str::<Vec<Vec<f32>>>(&text) {
        return Ok(QueryVectors::Batch(vs));
    }
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<f32>().with_context(|| format!("'{s}' is not a number")))
        .collect::<Result<_>>()
        .map(QueryVectors::One)
}

/// A query vector's values must be finite float32 (serde would send ±∞ as JSON null).
fn check_finite(vector: &[f32]) -> Result<()> {
    match vector.iter().position(|v| !v.is_finite()) {
        Some(i) => bail!("query value {i} is not a finite float32 ({}): every value must lie within ±3.4e38", vector[i]),
        None => Ok(()),
    }
}
