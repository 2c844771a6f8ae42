//! Facts about one table version (its vector index, the rows a filter admits) worked out once
//! and reused by every query at that version. A write makes a new version, so nothing here is
//! ever stale: an entry is simply not asked for again.
use std::collections::HashMap;
use std::sync::Mutex;

use lance::dataset::Dataset;

/// A table version, told apart from the same number of a dropped and re-created table by its
/// commit time.
pub type TableVersion = (u64, u128);

pub fn table_version(dataset: &Dataset) -> TableVersion {
    let manifest = dataset.manifest();
    (manifest.version, manifest.timestamp_nanos)
}

/// Per (dataset uri, key): the value at the version last worked out. Bounded: when full it
/// starts again empty (its values are cheap to rebuild next to a query's cost of missing them).
pub struct VersionCache<V> {
    entries: Mutex<HashMap<(String, String), (TableVersion, V)>>,
    capacity: usize,
}

impl<V: Clone> VersionCache<V> {
    pub fn new(capacity: usize) -> Self {
        VersionCache { entries: Mutex::new(HashMap::new()), capacity }
    }

    pub fn get(&self, dataset: &Dataset, key: &str) -> Option<V> {
        let entries = self.entries.lock().expect("version cache poisoned");
        match entries.get(&(dataset.uri().to_string(), key.to_string())) {
            Some((at, value)) if *at == table_version(dataset) => Some(value.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, dataset: &Dataset, key: &str, value: V) {
        let mut entries = self.entries.lock().expect("version cache poisoned");
        let slot = (dataset.uri().to_string(), key.to_string());
        if entries.len() >= self.capacity && !entries.contains_key(&slot) {
            entries.clear();
        }
        entries.insert(slot, (table_version(dataset), value));
    }

    /// Drops every entry of a dataset (the table was dropped).
    pub fn forget(&self, uri: &str) {
        self.entries.lock().expect("version cache poisoned").retain(|(at, _), _| at != uri);
    }
}
