//! Validation and normalisation of rows arriving by DoPut.
//!
//! The multimodal columns have one stored form each, whatever form a client sent:
//! `id` Utf8 (not null, unique in the put), `embedding` FixedSizeList<Float32>[dim]
//! (finite values), `data_type` Utf8 ∈ {text, image}, `raw_data` LargeBinary, `metadata`
//! Utf8 tagged as the `arrow.json` extension (each value valid JSON), which Lance stores as
//! JSONB so filters can reach into it. Other columns pass through unchanged.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, RecordBatch,
};
use arrow::compute::cast;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use hyprstream_proto::columns::{DATA_TYPE, EMBEDDING, ID, METADATA, RAW_DATA};
use hyprstream_proto::schema_keys;

use crate::error::{Error, Result};

const ARROW_EXT_NAME: &str = "ARROW:extension:name";
const ARROW_JSON: &str = "arrow.json";
const LANCE_JSON: &str = "lance.json";
const BLOB_META_KEY: &str = "lance-encoding:blob";
pub const DATA_TYPES: [&str; 2] = ["text", "image"];

/// Rows ready to commit: the stored schema and the batches cast to it.
#[derive(Debug)]
pub struct Ingest {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// Length of the `embedding` vectors, when the put has that column.
    pub dim: Option<usize>,
}

/// The stored field for a multimodal column, given the field a client sent.
fn stored_field(field: &Field, dim: Option<usize>) -> Result<Field> {
    let name = field.name().as_str();
    let bad = |want: &str| {
        Error::invalid(format!("column '{name}' has type {}, expected {want}", field.data_type()))
    };
    Ok(match name {
        ID => {
            if !is_string(field.data_type()) {
                return Err(bad("utf8"));
            }
            Field::new(ID, DataType::Utf8, false)
        }
        EMBEDDING => {
            let item = match field.data_type() {
                DataType::FixedSizeList(item, _) | DataType::List(item) | DataType::LargeList(item) => item,
                _ => return Err(bad("fixed_size_list<float32>[dim] (or list<float32>)")),
            };
            if !is_float(item.data_type()) {
                return Err(bad("a list of float32"));
            }
            let dim = dim.ok_or_else(|| {
                Error::invalid("column 'embedding' has no non-null vector to take the dimension from; send a fixed_size_list<float32>[dim] or create the table first with create_table {\"name\", \"dim\"}")
            })?;
            if dim == 0 || dim > super::MAX_DIM {
                return Err(Error::invalid(format!(
                    "column 'embedding' has vectors of length {dim}; the length must be between 1 and {}",
                    super::MAX_DIM
                )));
            }
            embedding_field(dim)
        }
        DATA_TYPE => {
            if !is_string(field.data_type()) {
                return Err(bad("utf8 ('text' or 'image')"));
            }
            Field::new(DATA_TYPE, DataType::Utf8, true)
        }
        RAW_DATA => {
            if !is_bytes(field.data_type()) {
                return Err(bad("binary or large_binary"));
            }
            raw_data_field()
        }
        METADATA => {
            if !is_string(field.data_type()) && !is_json_binary(field) {
                return Err(bad("JSON (pa.json_() or utf8 holding JSON)"));
            }
            metadata_field()
        }
        name if RESERVED_COLUMNS.contains(&name) => {
            return Err(Error::invalid(format!(
                "column '{name}' is a reserved name ({}): rename it",
                if name.starts_with("_row") { "Lance adds it when asked for row ids" } else { "searches add it to their results" }
            )))
        }
        _ => field.clone(),
    })
}

/// Column names results add (`_distance`, `_query`) or Lance keeps for itself: a stored
/// column of that name would clash with them on every read.
const RESERVED_COLUMNS: [&str; 4] = ["_distance", "_query", "_rowid", "_rowaddr"];

pub fn embedding_field(dim: usize) -> Field {
    Field::new(EMBEDDING, DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), dim as i32), true)
}

/// `raw_data` is stored with Lance's blob encoding: large payloads (images) live outside the
/// column pages, so scans that do not ask for them never read them.
pub fn raw_data_field() -> Field {
    Field::new(RAW_DATA, DataType::LargeBinary, true)
        .with_metadata(HashMap::from([(BLOB_META_KEY.to_string(), "true".to_string())]))
}

pub fn metadata_field() -> Field {
    Field::new(METADATA, DataType::Utf8, true)
        .with_metadata(HashMap::from([(ARROW_EXT_NAME.to_string(), ARROW_JSON.to_string())]))
}

/// The empty multimodal schema `create_table` makes.
pub fn multimodal_schema(dim: usize) -> Schema {
    Schema::new(vec![
        Field::new(ID, DataType::Utf8, false),
        embedding_field(dim),
        Field::new(DATA_TYPE, DataType::Utf8, true),
        raw_data_field(),
        metadata_field(),
    ])
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// What `raw_data` takes: bytes, or text stored as its UTF-8 bytes.
fn is_bytes(t: &DataType) -> bool {
    is_string(t) || is_binary(t)
}

fn is_binary(t: &DataType) -> bool {
    matches!(t, DataType::Binary | DataType::LargeBinary | DataType::BinaryView)
}

/// What an `embedding` list may hold (cast to float32 on the way in).
fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float32 | DataType::Float64 | DataType::Float16)
}

/// Lance hands JSON columns back as JSONB (`lance.json` on large_binary) in some paths.
fn is_json_binary(field: &Field) -> bool {
    field.metadata().get(ARROW_EXT_NAME).map(|s| s == LANCE_JSON).unwrap_or(false)
}

/// Dimension of the first non-null vector in the `embedding` column, if any.
fn infer_dim(field: &Field, batches: &[RecordBatch], index: usize) -> Result<Option<usize>> {
    if let DataType::FixedSizeList(_, n) = field.data_type() {
        return Ok(Some(*n as usize));
    }
    for batch in batches {
        let column = batch.column(index);
        for row in 0..column.len() {
            if column.is_valid(row) {
                let len = match column.data_type() {
                    DataType::List(_) => column.as_list::<i32>().value_length(row) as usize,
                    DataType::LargeList(_) => column.as_list::<i64>().value_length(row) as usize,
                    _ => unreachable!("checked by stored_field"),
                };
                return Ok(Some(len));
            }
        }
    }
    Ok(None)
}

/// Validates a put and casts it to the stored form. `table` is the existing table's schema,
/// if there is one: then columns are matched by name and put in the table's order, missing
/// nullable columns are filled with nulls, and unknown columns are refused.
pub fn prepare(input: &Schema, batches: Vec<RecordBatch>, table: Option<&Schema>) -> Result<Ingest> {
    input
        .index_of(ID)
        .map_err(|_| Error::invalid(format!("the put has no '{ID}' column (utf8, not null); columns sent: {}", names(input))))?;
    let mut seen = HashSet::new();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for f in input.fields() {
        *count.entry(f.name().as_str()).or_default() += 1;
        if count[f.name().as_str()] > 1 {
            return Err(Error::invalid(format!("column '{}' appears twice", f.name())));
        }
    }

    let table_dim = table.and_then(|t| t.field_with_name(EMBEDDING).ok()).and_then(|f| match f.data_type() {
        DataType::FixedSizeList(_, n) => Some(*n as usize),
        _ => None,
    });
    let dim = match input.index_of(EMBEDDING) {
        Ok(i) => match table_dim {
            Some(d) => Some(d),
            None => infer_dim(input.field(i), &batches, i)?,
        },
        Err(_) => table_dim,
    };

    // The stored schema: the table's, or the input's with the multimodal columns normalised.
    let target: SchemaRef = match table {
        Some(t) => {
            for f in input.fields() {
                if t.field_with_name(f.name()).is_err() {
                    return Err(Error::invalid(format!(
                        "schema mismatch: column '{}' is not in the table (its columns: {}); {}",
                        f.name(),
                        names(t),
                        if super::table_embedding_model(t).is_some() {
                            "drop it from the put (a table with an embedding model keeps its schema, overwrite included; drop_table and create_table it to change it)"
                        } else {
                            "drop it from the put or use mode \"overwrite\""
                        }
                    )));
                }
            }
            for f in t.fields() {
                if input.field_with_name(f.name()).is_err() && !f.is_nullable() {
                    return Err(Error::invalid(format!("schema mismatch: the put lacks column '{}', which is not nullable", f.name())));
                }
            }
            Arc::new(t.clone())
        }
        None => {
            let fields = input.fields().iter().map(|f| stored_field(f, dim)).collect::<Result<Vec<_>>>()?;
            if let Some(key) = input.metadata().keys().find(|k| k.starts_with(schema_keys::EMBEDDING_MODEL)) {
                return Err(Error::invalid(format!(
                    "schema metadata '{key}' cannot be set by a put: a table's embedding model is chosen with create_table {{\"embedding_model\": …}}; remove the key from the stream's schema"
                )));
            }
            // Only the metric is the put's to set; other keys (pandas', a result's search
            // path) are not the table's.
            let mut metadata = input.metadata().clone();
            metadata.retain(|k, _| k == schema_keys::METRIC);
            Arc::new(Schema::new_with_metadata(fields, metadata))
        }
    };

    let mut out = Vec::with_capacity(batches.len());
    let mut rows = 0;
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        // Checked before the cast: the stored `id` field is non-nullable.
        let ids = batch.column(input.index_of(ID).expect("checked above"));
        if let Some(row) = (0..ids.len()).find(|&i| ids.is_null(i)) {
            return Err(Error::invalid(format!("column 'id': row {} is null; every row needs an id", rows + row)));
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
        for target_field in target.fields() {
            let column = match input.index_of(target_field.name()) {
                Ok(i) => convert_column(input.field(i), batch.column(i), target_field, rows)?,
                Err(_) => new_null_array(target_field.data_type(), batch.num_rows()),
            };
            columns.push(column);
        }
        let converted = RecordBatch::try_new(target.clone(), columns)
            .map_err(|e| Error::invalid(format!("rows do not fit the table schema: {e}")))?;
        check_rows(&converted, &mut seen, rows)?;
        rows += converted.num_rows();
        out.push(converted);
    }
    Ok(Ingest { schema: target, batches: out, rows, dim })
}

fn names(schema: &Schema) -> String {
    schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>().join(", ")
}

/// Casts one column to its stored field, checking what a cast cannot. `first_row` is the
/// batch's first row's number in the put, for messages.
fn convert_column(input: &Field, column: &ArrayRef, target: &Field, first_row: usize) -> Result<ArrayRef> {
    let name = target.name().as_str();
    match name {
        EMBEDDING => convert_embedding(input, column, target, first_row),
        METADATA if is_json_binary(input) => Err(Error::invalid(
            "column 'metadata' arrived as JSONB; send it as pa.json_() or utf8 JSON text",
        )),
        _ => {
            if column.data_type() == target.data_type() {
                return Ok(column.clone());
            }
            let (from, to) = (column.data_type(), target.data_type());
            let compatible = match name {
                ID | DATA_TYPE | METADATA => is_string(from) && is_string(to),
                RAW_DATA => is_bytes(from),
                // Other columns: only another width of the same kind (a table made from
                // Polars stores large_string, pyarrow sends string), which casts losslessly.
                _ => (is_string(from) && is_string(to)) || (is_binary(from) && is_binary(to)),
            };
            if !compatible {
                return Err(Error::invalid(format!(
                    "schema mismatch: column '{name}' has type {}, the table stores {}",
                    column.data_type(),
                    target.data_type()
                )));
            }
            cast(column, target.data_type())
                .map_err(|e| Error::invalid(format!("column '{name}' cannot be stored as {}: {e}", target.data_type())))
        }
    }
}

fn convert_embedding(input: &Field, column: &ArrayRef, target: &Field, first_row: usize) -> Result<ArrayRef> {
    let DataType::FixedSizeList(item, dim) = target.data_type() else {
        // An extra column called `embedding` on a table stored without one: treat as opaque.
        return Ok(column.clone());
    };
    let dim = *dim as usize;
    let (offsets, values): (Vec<(usize, usize)>, ArrayRef) = match column.data_type() {
        DataType::FixedSizeList(_, n) => {
            let list = column.as_fixed_size_list();
            let n = *n as usize;
            if n != dim {
                return Err(Error::invalid(format!("column 'embedding' has vectors of length {n}; the table's dim is {dim}")));
            }
            let offset = list.offset();
            ((0..list.len()).map(|i| ((offset + i) * n, n)).collect(), list.values().clone())
        }
        DataType::List(_) => {
            let list = column.as_list::<i32>();
            (
                (0..list.len()).map(|i| (list.value_offsets()[i] as usize, list.value_length(i) as usize)).collect(),
                list.values().clone(),
            )
        }
        DataType::LargeList(_) => {
            let list = column.as_list::<i64>();
            (
                (0..list.len()).map(|i| (list.value_offsets()[i] as usize, list.value_length(i) as usize)).collect(),
                list.values().clone(),
            )
        }
        other => {
            return Err(Error::invalid(format!(
                "column 'embedding' has type {other} ({}), expected fixed_size_list<float32>[{dim}]",
                input.name()
            )))
        }
    };
    if !is_float(values.data_type()) {
        return Err(Error::invalid(format!(
            "column 'embedding' holds {} values, expected a list of float32 ({dim} per row)",
            values.data_type()
        )));
    }
    let values = cast(&values, &DataType::Float32).map_err(|e| Error::invalid(format!("column 'embedding': {e}")))?;
    let values = values.as_primitive::<arrow::datatypes::Float32Type>();
    let mut flat = Vec::with_capacity(column.len() * dim);
    for (row, &(start, len)) in offsets.iter().enumerate() {
        if column.is_null(row) {
            flat.extend(std::iter::repeat_n(0.0, dim));
            continue;
        }
        if len != dim {
            return Err(Error::invalid(format!(
                "column 'embedding': row {} has a vector of length {len}; the table's dim is {dim}",
                first_row + row
            )));
        }
        let slice = &values.values()[start..start + len];
        if values.null_count() > 0 && (start..start + len).any(|i| values.is_null(i)) {
            return Err(Error::invalid(format!("column 'embedding': row {} has a null inside its vector", first_row + row)));
        }
        if let Some(bad) = slice.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "column 'embedding': row {} has a non-finite value ({bad}); vectors must be finite",
                first_row + row
            )));
        }
        flat.extend_from_slice(slice);
    }
    let array = FixedSizeListArray::try_new(
        item.clone(),
        dim as i32,
        Arc::new(Float32Array::from(flat)),
        column.logical_nulls(),
    )?;
    Ok(Arc::new(array))
}

/// Row-level rules: ids present and unique across the whole put, data_type known, metadata JSON.
/// `first_row` is the batch's first row's number in the put, for messages.
fn check_rows(batch: &RecordBatch, seen: &mut HashSet<String>, first_row: usize) -> Result<()> {
    let ids = batch.column_by_name(ID).expect("id column").as_string::<i32>();
    for (row, id) in ids.iter().enumerate() {
        let Some(id) = id else {
            return Err(Error::invalid(format!("column 'id': row {} is null; every row needs an id", first_row + row)));
        };
        if !seen.insert(id.to_string()) {
            return Err(Error::invalid(format!("column 'id': '{id}' appears more than once in this put")));
        }
    }
    if let Some(column) = batch.column_by_name(DATA_TYPE) {
        for (row, value) in column.as_string::<i32>().iter().enumerate() {
            // Null means "not said"; any value said must be one we know.
            if let Some(v) = value.filter(|v| !DATA_TYPES.contains(v)) {
                return Err(Error::invalid(format!(
                    "column 'data_type': row {} (id '{}') is '{v}'; it must be 'text' or 'image' (or null)",
                    first_row + row,
                    ids.value(row)
                )));
            }
        }
    }
    if let Some(column) = batch.column_by_name(METADATA) {
        for (row, value) in column.as_string::<i32>().iter().enumerate() {
            if let Some(text) = value {
                if let Err(e) = check_json(text) {
                    return Err(Error::invalid(format!(
                        "column 'metadata': row {} (id '{}') is not valid JSON: {e}",
                        first_row + row,
                        ids.value(row)
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ListBuilder, Float64Builder, StringArray};

    fn put(fields: Vec<Field>, columns: Vec<ArrayRef>) -> (Schema, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        ((*schema).clone(), vec![batch])
    }

    #[test]
    fn list_vectors_become_fixed_size_and_json_text_is_tagged() {
        let mut emb = ListBuilder::new(Float64Builder::new());
        emb.values().append_slice(&[1.0, 2.0]);
        emb.append(true);
        emb.append(false);
        let (schema, batches) = put(
            vec![
                Field::new(ID, DataType::LargeUtf8, true),
                Field::new(EMBEDDING, DataType::List(Arc::new(Field::new("item", DataType::Float64, true))), true),
                Field::new(METADATA, DataType::Utf8, true),
            ],
            vec![
                Arc::new(arrow::array::LargeStringArray::from(vec!["a", "b"])),
                Arc::new(emb.finish()),
                Arc::new(StringArray::from(vec![Some("{\"x\": 1}"), None])),
            ],
        );
        let ingest = prepare(&schema, batches, None).unwrap();
        assert_eq!(ingest.dim, Some(2));
        assert_eq!(ingest.schema.field(0), &Field::new(ID, DataType::Utf8, false));
        assert_eq!(ingest.schema.field(1), &embedding_field(2));
        assert_eq!(ingest.schema.field(2), &metadata_field());
        let emb = ingest.batches[0].column(1).as_fixed_size_list();
        assert!(emb.is_valid(0) && emb.is_null(1));
    }

    #[test]
    fn empty_vectors_are_refused() {
        let mut emb = ListBuilder::new(Float64Builder::new());
        emb.append(true);
        let (schema, batches) = put(
            vec![
                Field::new(ID, DataType::Utf8, false),
                Field::new(EMBEDDING, DataType::List(Arc::new(Field::new("item", DataType::Float64, true))), true),
            ],
            vec![Arc::new(StringArray::from(vec!["a"])), Arc::new(emb.finish())],
        );
        assert!(prepare(&schema, batches, None).unwrap_err().message.contains("between 1 and"));
    }

    #[test]
    fn every_row_rule_is_checked() {
        let rows = |ids: Vec<Option<&str>>, types: Vec<&str>, meta: Vec<&str>| {
            put(
                vec![
                    Field::new(ID, DataType::Utf8, true),
                    Field::new(DATA_TYPE, DataType::Utf8, true),
                    Field::new(METADATA, DataType::Utf8, true),
                ],
                vec![
                    Arc::new(StringArray::from(ids)),
                    Arc::new(StringArray::from(types)),
                    Arc::new(StringArray::from(meta)),
                ],
            )
        };
        let (s, b) = rows(vec![Some("a"), None], vec!["text", "text"], vec!["{}", "{}"]);
        assert!(prepare(&s, b, None).unwrap_err().message.contains("row 1 is null"));
        let (s, b) = rows(vec![Some("a"), Some("a")], vec!["text", "text"], vec!["{}", "{}"]);
        assert!(prepare(&s, b, None).unwrap_err().message.contains("more than once"));
        let (s, b) = rows(vec![Some("a"), Some("b")], vec!["text", "audio"], vec!["{}", "{}"]);
        assert!(prepare(&s, b, None).unwrap_err().message.contains("'text' or 'image'"));
        let (s, b) = rows(vec![Some("a"), Some("b")], vec!["text", "image"], vec!["{}", "{oops"]);
        assert!(prepare(&s, b, None).unwrap_err().message.contains("not valid JSON"));
        let (s, b) = rows(vec![Some("a"), Some("b")], vec!["text", "image"], vec!["{}", "[1, 2]"]);
        assert_eq!(prepare(&s, b, None).unwrap().rows, 2);
    }

    #[test]
    fn an_existing_table_fixes_order_fills_nullable_gaps_and_refuses_strangers() {
        let table = multimodal_schema(2);
        let (s, b) = put(vec![Field::new(ID, DataType::Utf8, false)], vec![Arc::new(StringArray::from(vec!["a"]))]);
        let ingest = prepare(&s, b, Some(&table)).unwrap();
        assert_eq!(ingest.schema.fields().len(), 5);
        assert!(ingest.batches[0].column(1).is_null(0));
        let (s, b) = put(
            vec![Field::new(ID, DataType::Utf8, false), Field::new("pages", DataType::Utf8, true)],
            vec![Arc::new(StringArray::from(vec!["a"])), Arc::new(StringArray::from(vec!["x"]))],
        );
        assert!(prepare(&s, b, Some(&table)).unwrap_err().message.contains("'pages' is not in the table"));
    }
}

/// Deepest nesting of arrays and objects a metadata value may have. Lance's JSONB encoder
/// recurses once per level (thousands of levels overflowed the server's stack), and readers
/// such as serde_json stop at 128.
const MAX_JSON_DEPTH: usize = 64;

/// Checks that `text` is one JSON value that Lance's JSONB column stores as sent: nested at
/// most `MAX_JSON_DEPTH` levels, no key twice in one object (JSONB refuses it), numbers within
/// f64 (JSONB would store an overflowing one as null) and no lone UTF-16 surrogates (serde_json
/// refuses both of those).
fn check_json(text: &str) -> std::result::Result<(), serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

    struct Value {
        depth: usize,
    }
    impl<'de> DeserializeSeed<'de> for Value {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> std::result::Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }
    impl Value {
        fn nested<E: serde::de::Error>(&self) -> std::result::Result<Value, E> {
            match self.depth < MAX_JSON_DEPTH {
                true => Ok(Value { depth: self.depth + 1 }),
                false => Err(E::custom(format!("nested deeper than {MAX_JSON_DEPTH} levels"))),
            }
        }
    }
    impl<'de> Visitor<'de> for Value {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
            match v.is_finite() {
                true => Ok(()),
                false => Err(E::custom("number out of range")),
            }
        }
        fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> std::result::Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> std::result::Result<(), A::Error> {
            let inner = self.nested()?;
            while items.next_element_seed(Value { depth: inner.depth })?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> std::result::Result<(), A::Error> {
            let inner = self.nested()?;
            let mut keys = HashSet::new();
            while let Some(key) = entries.next_key::<String>()? {
                if !keys.insert(key.clone()) {
                    return Err(A::Error::custom(format!("key \"{key}\" appears twice in one object")));
                }
                entries.next_value_seed(Value { depth: inner.depth })?;
            }
            Ok(())
        }
    }

    let mut deserializer = serde_json::Deserializer::from_str(text);
    Value { depth: 0 }.deserialize(&mut deserializer)?;
    deserializer.end()
}

#[cfg(test)]
mod json_tests {
    use super::*;

    #[test]
    fn metadata_json_is_checked_as_lance_stores_it() {
        assert!(check_json(r#"{"chapter": 2, "tags": ["a", {"b": null}], "x": 1.5e10}"#).is_ok());
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_json(&nested(MAX_JSON_DEPTH)).is_ok());
        assert!(check_json(&nested(MAX_JSON_DEPTH + 1)).unwrap_err().to_string().contains("nested deeper than 64"));
        assert!(check_json(&nested(100_000)).is_err());
        assert!(check_json(r#"{"x": 1, "x": 2}"#).unwrap_err().to_string().contains("\"x\" appears twice"));
        assert!(check_json(r#"{"x": 1e400}"#).is_err());
        assert!(check_json(r#"{"x": "\ud800"}"#).is_err());
        assert!(check_json(r#"{"x": 1} trailing"#).is_err());
        assert!(check_json("").is_err());
    }
}
