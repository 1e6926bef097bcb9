//! The fleet as the registry holds it (`P/`): gateway records and ops drains decoded in one
//! consistent snapshot, kept current ([`watch`]) or read once ([`load`]), plus the few
//! writes tools make (ops drain and undrain).

use std::sync::Arc;

use etcd_client::{Client, GetOptions};

use crate::keys::{GatewayId, KeyKind, Prefix};
use crate::record::{DrainRecord, GatewayRecord};
use crate::watcher::{Decoder, PrefixWatcher, Snapshot, WatcherConfig};

/// One decoded key under the prefix.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// `P/gateways/<id>`.
    Gateway(GatewayRecord),
    /// `P/drain/<id>`, with the id parsed from the key, so no reader takes the key apart
    /// again.
    Drain(GatewayId, DrainRecord),
}

/// A [`PrefixWatcher`] over `P/` that decodes gateways and drains.
pub type Fleet = PrefixWatcher<Entry>;

/// The decoder for [`Fleet`]: gateway records are validated (and must name the id
/// in their key), drains must be JSON objects, other keys are ignored.
pub fn decoder(prefix: &Prefix) -> Decoder<Entry> {
    let prefix = prefix.clone();
    Arc::new(move |key: &str, value: &[u8]| decode(&prefix, key, value))
}

fn decode(prefix: &Prefix, key: &str, value: &[u8]) -> Result<Option<Entry>, String> {
    match prefix.classify(key) {
        Some(KeyKind::Gateway(id)) => GatewayRecord::from_key_value(id, value)
            .map(|r| Some(Entry::Gateway(r)))
            .map_err(|e| e.to_string()),
        Some(KeyKind::Drain(id)) => {
            let id = GatewayId::new(id).map_err(|e| e.to_string())?;
            DrainRecord::from_json(value)
                .map(|d| Some(Entry::Drain(id, d)))
                .map_err(|e| e.to_string())
        }
        None => Ok(None),
    }
}

/// Starts watching the whole registry under `prefix`.
pub fn watch(client: Client, prefix: &Prefix, config: WatcherConfig) -> Fleet {
    PrefixWatcher::spawn(client, prefix.root(), decoder(prefix), config)
}

/// Reads the whole registry once (for tools that need no watch): the same decoding as
/// [`watch`], values that do not parse land in [`Snapshot::rejected`].
pub async fn load(client: &Client, prefix: &Prefix) -> Result<Snapshot<Entry>, etcd_client::Error> {
    let root = prefix.root();
    let resp = crate::etcd::retry(|| {
        let mut c = client.clone();
        let root = root.clone();
        async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
    })
    .await?;
    let mut snap = Snapshot {
        // At least 1, so a loaded empty registry still reads as loaded.
        revision: resp.header().map_or(0, |h| h.revision()).max(1),
        ..Snapshot::default()
    };
    for kv in resp.kvs() {
        let Some(rel) = kv.key_str().ok().and_then(|k| k.strip_prefix(&root)) else {
            continue;
        };
        match decode(prefix, rel, kv.value()) {
            Ok(Some(entry)) => {
                snap.items.insert(rel.to_owned(), Arc::new(entry));
            }
            Ok(None) => {}
            Err(reason) => {
                snap.rejected.insert(rel.to_owned(), reason);
            }
        }
    }
    Ok(snap)
}

/// Gateway records in a registry snapshot, by id.
pub fn gateways(snapshot: &Snapshot<Entry>) -> impl Iterator<Item = &GatewayRecord> {
    snapshot.items.values().filter_map(|e| match e.as_ref() {
        Entry::Gateway(g) => Some(g),
        Entry::Drain(..) => None,
    })
}

/// Ops drains in a registry snapshot: `(gateway id, drain)`.
pub fn drains(snapshot: &Snapshot<Entry>) -> impl Iterator<Item = (&GatewayId, &DrainRecord)> {
    snapshot.items.values().filter_map(|e| match e.as_ref() {
        Entry::Drain(id, d) => Some((id, d)),
        Entry::Gateway(_) => None,
    })
}

/// Writes `P/drain/<id>` (no lease: it stays until undrained). Returns the revision.
pub async fn put_drain(
    client: &Client,
    prefix: &Prefix,
    id: &GatewayId,
    drain: &DrainRecord,
) -> Result<i64, etcd_client::Error> {
    let key = prefix.drain(id);
    let value = drain.to_json();
    let resp = crate::etcd::retry(|| {
        let mut c = client.clone();
        let (key, value) = (key.clone(), value.clone());
        async move { c.put(key, value, None).await }
    })
    .await?;
    Ok(resp.header().map_or(0, |h| h.revision()))
}

/// Deletes `P/drain/<id>`; true when there was one.
pub async fn delete_drain(
    client: &Client,
    prefix: &Prefix,
    id: &GatewayId,
) -> Result<bool, etcd_client::Error> {
    let key = prefix.drain(id);
    let resp = crate::etcd::retry(|| {
        let mut c = client.clone();
        let key = key.clone();
        async move { c.delete(key, None).await }
    })
    .await?;
    Ok(resp.deleted() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_sorts_keys_into_entries() {
        let d = decoder(&Prefix::default());
        let rec = br#"{"id":"gw-1","addrs":{"tcp":"127.0.0.1:7200"},"capacity":10}"#;
        assert!(matches!(
            d("gateways/gw-1", rec),
            Ok(Some(Entry::Gateway(_)))
        ));
        assert!(
            d("gateways/gw-2", rec)
                .unwrap_err()
                .contains("does not match")
        );
        assert_eq!(
            d("drain/gw-1", b"{}"),
            Ok(Some(Entry::Drain(
                GatewayId::new("gw-1").unwrap(),
                DrainRecord::default()
            )))
        );
        assert!(d("drain/bad id", b"{}").is_err());
        assert!(d("gateways/gw-1", b"garbage").is_err());
        assert!(matches!(d("something/else", b"garbage"), Ok(None)));
    }
}
