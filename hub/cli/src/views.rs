//! What `aq` lists about the hub's catalog (sources, datasets, versions, regions, a manifest,
//! the versions of the CLI, hub and spokes), as view structs: made from the contract's types
//! here, serialized as they are for `-o json|yaml` and drawn as tables for `-o table|wide`.
//!
//! The field names are a contract with the scripts that read them (the README lists them):
//! snake_case, byte counts as integers (`*_bytes`, `bytes`), instants twice (`created`: RFC 3339
//! or null when unset, `created_unix_ms`), digests as lowercase hex. New fields may come; these
//! do not change. `aq status` has its own module (`status`).
//!
//! The file is some 670 lines long because every listing's view sits here, with the tests
//! that pin their field names: one place to keep the names consistent across listings.

use std::collections::BTreeMap;

use aqueduct_proto::hub::v1 as pb;
use aqueduct_proto::{Digest, MANIFEST_FORMAT, Manifest, Rate};
use serde::Serialize;

use crate::output::{Listing, Table, age, bytes, rfc3339, until};
use crate::triggers::WatchView;
use crate::verify::SignatureView;

/// Lowercase hex of a digest the hub sent (empty when it is not 32 bytes).
fn hex(digest: &[u8]) -> String {
    Digest::from_slice(digest).map(|d| d.to_hex()).unwrap_or_default()
}

/// `-` for an empty cell.
fn or_dash(text: String) -> String {
    if text.is_empty() { "-".to_string() } else { text }
}

#[derive(Serialize)]
pub struct Sources {
    pub sources: Vec<SourceView>,
}

#[derive(Serialize)]
pub struct SourceView {
    pub name: String,
    pub url: String,
    /// Connection options and credential references (never a secret).
    pub options: BTreeMap<String, String>,
    pub created: Option<String>,
    pub created_unix_ms: i64,
}

impl From<pb::ListSourcesResponse> for Sources {
    fn from(list: pb::ListSourcesResponse) -> Self {
        let sources = list
            .sources
            .into_iter()
            .map(|s| SourceView {
                name: s.name,
                url: s.url,
                options: s.options.into_iter().collect(),
                created: rfc3339(s.created_unix_ms),
                created_unix_ms: s.created_unix_ms,
            })
            .collect();
        Sources { sources }
    }
}

impl Listing for Sources {
    fn text(&self, wide: bool) -> String {
        let mut t = Table::new(["NAME", "URL", "OPTIONS", "AGE", if wide { "CREATED" } else { "" }]);
        for s in &self.sources {
            let options: Vec<String> = s.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let created = if wide { s.created.clone().unwrap_or_default() } else { String::new() };
            t.row([s.name.clone(), s.url.clone(), options.join(","), age(s.created_unix_ms), created]);
        }
        t.render()
    }
}

#[derive(Serialize)]
pub struct Datasets {
    pub datasets: Vec<DatasetView>,
}

#[derive(Serialize)]
pub struct DatasetView {
    pub name: String,
    pub source: String,
    pub prefix: String,
    /// The newest version's number; null before the first snapshot.
    pub latest_version: Option<u64>,
    /// `fail` or `skip`.
    pub outside_links: String,
    /// Retention: the newest N versions kept (null: the hub's default).
    pub keep_versions: Option<u32>,
    pub created: Option<String>,
    pub created_unix_ms: i64,
    /// Its watch, with the last check and the next (null: not watched).
    pub watch: Option<WatchView>,
}

impl From<pb::ListDatasetsResponse> for Datasets {
    fn from(list: pb::ListDatasetsResponse) -> Self {
        let datasets = list
            .datasets
            .into_iter()
            .map(|d| DatasetView {
                latest_version: (d.latest_version > 0).then_some(d.latest_version),
                keep_versions: (d.keep_versions > 0).then_some(d.keep_versions),
                outside_links: if d.outside_links.is_empty() { "fail".to_string() } else { d.outside_links },
                name: d.name,
                source: d.source,
                prefix: d.prefix,
                created: rfc3339(d.created_unix_ms),
                created_unix_ms: d.created_unix_ms,
                watch: d.watch.map(WatchView::from),
            })
            .collect();
        Datasets { datasets }
    }
}

impl Listing for Datasets {
    fn text(&self, wide: bool) -> String {
        let mut t = if wide {
            Table::new([
                "NAME",
                "SOURCE",
                "PREFIX",
                "LATEST",
                "OUTSIDE LINKS",
                "AGE",
                "WATCH",
                "LAST CHECK",
                "NEXT CHECK",
                "KEEP",
                "CREATED",
            ])
        } else {
            Table::new([
                "NAME",
                "SOURCE",
                "PREFIX",
                "LATEST",
                "OUTSIDE LINKS",
                "AGE",
                "WATCH",
                "LAST CHECK",
                "",
                "",
                "",
            ])
        };
        for d in &self.datasets {
            let latest = d.latest_version.map_or("-".into(), |v| format!("v{v}"));
            let (keep, created) = match wide {
                true => {
                    (d.keep_versions.map_or("default".into(), |k| k.to_string()), d.created.clone().unwrap_or_default())
                }
                false => (String::new(), String::new()),
            };
            let (watch, last) = d.watch.as_ref().map_or(("-".into(), "-".into()), |w| (w.cadence(), w.last()));
            let next = match wide {
                true => d.watch.as_ref().map_or("-".into(), WatchView::next),
                false => String::new(),
            };
            t.row([
                d.name.clone(),
                d.source.clone(),
                d.prefix.clone(),
                latest,
                d.outside_links.clone(),
                age(d.created_unix_ms),
                watch,
                last,
                next,
                keep,
                created,
            ]);
        }
        t.render()
    }
}

#[derive(Serialize)]
pub struct Versions {
    pub dataset: String,
    pub versions: Vec<VersionView>,
    pub tags: Vec<TagView>,
}

#[derive(Serialize)]
pub struct VersionView {
    pub version: u64,
    /// The manifest's root hash, hex.
    pub root: String,
    pub files: u64,
    pub bytes: u64,
    pub chunks: u64,
    /// Bytes of distinct chunks the previous version did not have.
    pub new_bytes: u64,
    /// Bytes read from the source to cut it.
    pub read_bytes: u64,
    /// Objects under the prefix left out of the version, with why.
    pub skipped: Vec<SkippedView>,
    pub tags: Vec<String>,
    /// Why the hub keeps it; empty: `aq gc` removes it.
    pub retained_by: Vec<String>,
    pub created: Option<String>,
    pub created_unix_ms: i64,
    /// Who signed it and when (null: not signed).
    pub signature: Option<SignatureView>,
}

#[derive(Serialize)]
pub struct SkippedView {
    pub key: String,
    pub reason: String,
}

#[derive(Serialize)]
pub struct TagView {
    pub name: String,
    pub version: u64,
    pub updated: Option<String>,
    pub updated_unix_ms: i64,
}

impl VersionView {
    pub fn new(v: pb::VersionSummary) -> Self {
        VersionView {
            root: hex(&v.root),
            version: v.version,
            files: v.files,
            bytes: v.bytes,
            chunks: v.chunks,
            new_bytes: v.new_bytes,
            read_bytes: v.bytes_read,
            skipped: v.skipped.into_iter().map(|s| SkippedView { key: s.key, reason: s.reason }).collect(),
            tags: v.tags,
            retained_by: v.retained_by,
            created: rfc3339(v.created_unix_ms),
            created_unix_ms: v.created_unix_ms,
            signature: v.signature.as_ref().map(SignatureView::from_wire),
        }
    }
}

impl Versions {
    pub fn new(dataset: String, list: pb::ListVersionsResponse) -> Self {
        let tags = list
            .tags
            .into_iter()
            .map(|t| TagView {
                name: t.name,
                version: t.version,
                updated: rfc3339(t.updated_unix_ms),
                updated_unix_ms: t.updated_unix_ms,
            })
            .collect();
        Versions { dataset, versions: list.versions.into_iter().map(VersionView::new).collect(), tags }
    }
}

impl Listing for Versions {
    fn text(&self, wide: bool) -> String {
        let mut t = Table::new(["VERSION", "FILES", "SIZE", "CHUNKS", "NEW", "SKIPPED", "ROOT", "AGE"]);
        let mut w = Table::new([
            "VERSION",
            "FILES",
            "SIZE",
            "CHUNKS",
            "NEW",
            "READ",
            "SKIPPED",
            "ROOT",
            "TAGS",
            "RETAINED BY",
            "CREATED",
            "SIGNED BY",
        ]);
        for v in &self.versions {
            if wide {
                w.row([
                    format!("v{}", v.version),
                    v.files.to_string(),
                    bytes(v.bytes),
                    v.chunks.to_string(),
                    bytes(v.new_bytes),
                    bytes(v.read_bytes),
                    v.skipped.len().to_string(),
                    v.root.clone(),
                    or_dash(v.tags.join(",")),
                    or_dash(v.retained_by.join("; ")),
                    v.created.clone().unwrap_or_default(),
                    or_dash(v.signature.as_ref().map(|s| s.key_id.clone()).unwrap_or_default()),
                ]);
            } else {
                t.row([
                    format!("v{}", v.version),
                    v.files.to_string(),
                    bytes(v.bytes),
                    v.chunks.to_string(),
                    bytes(v.new_bytes),
                    v.skipped.len().to_string(),
                    v.root.get(..12).unwrap_or_default().to_string(),
                    age(v.created_unix_ms),
                ]);
            }
        }
        if wide { w.render() } else { t.render() }
    }
}

#[derive(Serialize)]
pub struct Regions {
    pub regions: Vec<RegionView>,
}

#[derive(Serialize)]
pub struct RegionView {
    pub name: String,
    /// The flat link budget (the region's budget when it has no schedule).
    pub rate_bytes_per_sec: u64,
    /// Its weekly budget schedule and time zone; null: the flat budget.
    pub schedule: Option<String>,
    pub time_zone: Option<String>,
    /// The budget in force now.
    pub budget_bytes_per_sec: u64,
    /// When the budget next changes, and to what; null: never.
    pub next_change: Option<String>,
    pub next_change_unix_ms: Option<i64>,
    pub next_budget_bytes_per_sec: Option<u64>,
    /// Its live spokes (those whose watch is open), by node.
    pub spokes: Vec<MemberView>,
    pub created: Option<String>,
    pub created_unix_ms: i64,
}

#[derive(Serialize)]
pub struct MemberView {
    pub node: String,
    /// Where it serves its peers, HOST:PORT; null for a spoke without a peer share.
    pub peer_address: Option<String>,
}

impl From<pb::ListRegionsResponse> for Regions {
    fn from(list: pb::ListRegionsResponse) -> Self {
        let regions = list
            .regions
            .into_iter()
            .map(|r| RegionView {
                name: r.name,
                rate_bytes_per_sec: r.rate_bytes_per_sec,
                schedule: (!r.schedule.is_empty()).then_some(r.schedule),
                time_zone: (!r.time_zone.is_empty()).then_some(r.time_zone),
                budget_bytes_per_sec: r.budget_now_bytes_per_sec,
                next_change: (r.next_change_unix_ms != 0).then(|| rfc3339(r.next_change_unix_ms)).flatten(),
                next_change_unix_ms: (r.next_change_unix_ms != 0).then_some(r.next_change_unix_ms),
                next_budget_bytes_per_sec: (r.next_change_unix_ms != 0).then_some(r.next_budget_bytes_per_sec),
                spokes: r
                    .members
                    .into_iter()
                    .map(|m| MemberView {
                        node: m.node,
                        peer_address: (!m.peer_address.is_empty()).then_some(m.peer_address),
                    })
                    .collect(),
                created: rfc3339(r.created_unix_ms),
                created_unix_ms: r.created_unix_ms,
            })
            .collect();
        Regions { regions }
    }
}

impl Listing for Regions {
    fn text(&self, wide: bool) -> String {
        let mut t = Table::new(["NAME", "BUDGET", "NEXT", "LIVE SPOKES", "AGE"]);
        let mut w = Table::new([
            "NAME",
            "BUDGET",
            "NEXT",
            "LIVE SPOKES",
            "AGE",
            "SCHEDULE",
            "SPOKES",
            "PEER ADDRESSES",
            "CREATED",
        ]);
        for r in &self.regions {
            let spokes = or_dash(r.spokes.iter().map(|m| m.node.as_str()).collect::<Vec<_>>().join(","));
            let next = match (r.next_change_unix_ms, r.next_budget_bytes_per_sec) {
                (Some(at), Some(rate)) => format!("{} {}", Rate(rate), until(at)),
                _ => "-".to_string(),
            };
            let cells =
                [r.name.clone(), Rate(r.budget_bytes_per_sec).to_string(), next, spokes, age(r.created_unix_ms)];
            if wide {
                let peers = r.spokes.iter().map(|m| m.peer_address.as_deref().unwrap_or("-")).collect::<Vec<_>>();
                let schedule = r
                    .schedule
                    .as_ref()
                    .map_or("-".to_string(), |s| format!("{s} ({})", r.time_zone.as_deref().unwrap_or("UTC")));
                let [a, b, c, d, e] = cells;
                w.row([
                    a,
                    b,
                    c,
                    d,
                    e,
                    schedule,
                    r.spokes.len().to_string(),
                    or_dash(peers.join(",")),
                    r.created.clone().unwrap_or_default(),
                ]);
            } else {
                t.row(cells);
            }
        }
        if wide { w.render() } else { t.render() }
    }
}

#[derive(Serialize)]
pub struct ManifestView {
    pub dataset: String,
    pub version: u64,
    /// BLAKE3 over the manifest, hex.
    pub root: String,
    /// The manifest's format number.
    pub format: u32,
    pub chunker: ChunkerView,
    pub total_bytes: u64,
    pub chunk_count: u64,
    pub files: Vec<FileView>,
    /// Objects under the prefix left out of the version, with why.
    pub skipped: Vec<SkippedView>,
    /// Who signed the version and when (null: not signed).
    pub signature: Option<SignatureView>,
}

#[derive(Serialize)]
pub struct ChunkerView {
    pub min_bytes: u32,
    pub avg_bytes: u32,
    pub max_bytes: u32,
}

#[derive(Serialize)]
pub struct FileView {
    pub path: String,
    /// The object in the source that holds the bytes.
    pub object: String,
    pub size_bytes: u64,
    /// Permission bits, octal (`644`).
    pub mode: String,
    pub mtime: Option<String>,
    pub mtime_unix_ms: i64,
    pub chunk_count: usize,
    /// Only with `--chunks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<Vec<ChunkView>>,
}

#[derive(Serialize)]
pub struct ChunkView {
    pub offset: u64,
    pub length: u32,
    /// BLAKE3 of the chunk's bytes, hex.
    pub digest: String,
}

impl ManifestView {
    /// A verified manifest and what its version left out; the chunks only if asked.
    pub fn new(m: &Manifest, skipped: Vec<pb::SkippedObject>, chunks: bool) -> Self {
        ManifestView {
            dataset: m.dataset.clone(),
            version: m.version,
            root: m.root.to_hex(),
            format: MANIFEST_FORMAT,
            chunker: ChunkerView {
                min_bytes: m.chunker.min_size,
                avg_bytes: m.chunker.avg_size,
                max_bytes: m.chunker.max_size,
            },
            total_bytes: m.total_bytes(),
            chunk_count: m.chunk_count(),
            files: m
                .files
                .iter()
                .map(|f| FileView {
                    path: f.path.clone(),
                    object: f.object.clone(),
                    size_bytes: f.size,
                    mode: format!("{:o}", f.mode),
                    mtime: rfc3339(f.mtime_unix_ms),
                    mtime_unix_ms: f.mtime_unix_ms,
                    chunk_count: f.chunks.len(),
                    chunks: chunks.then(|| {
                        f.chunks
                            .iter()
                            .map(|c| ChunkView { offset: c.offset, length: c.length, digest: c.digest.to_hex() })
                            .collect()
                    }),
                })
                .collect(),
            skipped: skipped.into_iter().map(|s| SkippedView { key: s.key, reason: s.reason }).collect(),
            signature: m.signature.as_ref().map(SignatureView::new),
        }
    }
}

/// What a version left out, as a warning after its summary or manifest.
pub fn skipped_text(version: u64, skipped: &[SkippedView]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let mut text = format!("warning: {} object(s) under the prefix are not in v{version}:\n", skipped.len());
    for s in skipped {
        text.push_str(&format!("  {:?}: {}\n", s.key, s.reason));
    }
    text
}

impl Listing for ManifestView {
    fn text(&self, wide: bool) -> String {
        let mut text = format!(
            "{}@v{}: {} files, {}, {} chunks (chunker {}/{}/{} KiB)\nroot {}\n",
            self.dataset,
            self.version,
            self.files.len(),
            bytes(self.total_bytes),
            self.chunk_count,
            self.chunker.min_bytes >> 10,
            self.chunker.avg_bytes >> 10,
            self.chunker.max_bytes >> 10,
            self.root
        );
        text.push_str(&SignatureView::line(self.signature.as_ref()));
        let mut t =
            Table::new(["PATH", "SIZE", "MODE", "MTIME", "CHUNKS", "OBJECT", if wide { "MODIFIED" } else { "" }]);
        for f in &self.files {
            let modified = if wide { f.mtime.clone().unwrap_or_default() } else { String::new() };
            t.row([
                f.path.clone(),
                bytes(f.size_bytes),
                f.mode.clone(),
                age(f.mtime_unix_ms),
                f.chunk_count.to_string(),
                f.object.clone(),
                modified,
            ]);
        }
        text.push_str(&t.render());
        text.push_str(&skipped_text(self.version, &self.skipped));
        let mut chunks = Table::new(["PATH", "OFFSET", "LENGTH", "BLAKE3"]);
        for f in &self.files {
            for c in f.chunks.iter().flatten() {
                chunks.row([f.path.clone(), c.offset.to_string(), c.length.to_string(), c.digest.clone()]);
            }
        }
        if !chunks.is_empty() {
            text.push_str(&chunks.render());
        }
        text
    }
}

/// `aq version`: this CLI's build, the hub's and each live spoke's.
#[derive(Serialize)]
pub struct VersionsInfo {
    pub cli: String,
    pub hub: String,
    /// The address of the hub that answered (of those `--hub` names); empty when not known.
    pub hub_address: String,
    pub spokes: Vec<SpokeVersion>,
}

#[derive(Serialize)]
pub struct SpokeVersion {
    pub region: String,
    pub node: String,
    /// Null when the spoke has not said (an older spoke).
    pub version: Option<String>,
    /// Its version differs from the hub's (or is unknown).
    pub skew: bool,
}

impl VersionsInfo {
    pub fn new(cli: &str, info: pb::InfoResponse) -> Self {
        let hub = info.hub_version;
        let spokes = info
            .spokes
            .into_iter()
            .map(|s| SpokeVersion {
                skew: s.agent_version != hub,
                version: (!s.agent_version.is_empty()).then_some(s.agent_version),
                region: s.region,
                node: s.node,
            })
            .collect();
        VersionsInfo { cli: cli.to_string(), hub, hub_address: String::new(), spokes }
    }

    /// The same, saying that the hub at `address` answered.
    pub fn at(self, address: &str) -> Self {
        VersionsInfo { hub_address: address.to_string(), ..self }
    }
}

impl Listing for VersionsInfo {
    fn text(&self, wide: bool) -> String {
        let mut text = format!("aq    {}\nhub   {}", self.cli, self.hub);
        if !self.hub_address.is_empty() {
            text.push_str(&format!(" at {}", self.hub_address));
        }
        text.push('\n');
        if self.cli != self.hub {
            text.push_str(&format!("warning: aq {} and the hub {} differ\n", self.cli, self.hub));
        }
        let mut t = Table::new(["REGION", "NODE", "VERSION", "SKEW"]);
        for s in &self.spokes {
            let skew = match (&s.version, s.skew) {
                (None, _) => "unknown".to_string(),
                (Some(_), true) => format!("yes (hub {})", self.hub),
                (Some(_), false) => "-".to_string(),
            };
            t.row([s.region.clone(), s.node.clone(), s.version.clone().unwrap_or_else(|| "-".into()), skew]);
        }
        if !t.is_empty() || wide {
            text.push('\n');
            text.push_str(&t.render());
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{Format, render};

    #[test]
    fn wide_adds_columns_and_json_keeps_field_names() {
        let list = pb::ListRegionsResponse {
            regions: vec![pb::Region {
                name: "eu".into(),
                rate_bytes_per_sec: 1 << 20,
                created_unix_ms: 1_764_480_000_000,
                members: vec![pb::Member { node: "n1".into(), peer_address: "10.0.0.1:7444".into() }],
                ..Default::default()
            }],
        };
        let regions = Regions::from(list);
        let table = render(&regions, Format::Table).unwrap();
        let wide = render(&regions, Format::Wide).unwrap();
        assert!(!table.contains("PEER ADDRESSES") && wide.contains("PEER ADDRESSES"), "{wide}");
        assert!(wide.contains("10.0.0.1:7444") && wide.contains("2025-11-30T05:20:00.000Z"), "{wide}");
        let json: serde_json::Value = serde_json::from_str(&render(&regions, Format::Json).unwrap()).unwrap();
        assert_eq!(json["regions"][0]["rate_bytes_per_sec"], 1 << 20);
        assert_eq!(json["regions"][0]["spokes"][0]["peer_address"], "10.0.0.1:7444");
        assert_eq!(json["regions"][0]["created_unix_ms"], 1_764_480_000_000i64);
    }

    #[test]
    fn spokes_of_another_version_are_skew() {
        let info = pb::InfoResponse {
            hub_version: "0.2.0".into(),
            spokes: vec![
                pb::SpokeInfo { region: "eu".into(), node: "a".into(), agent_version: "0.2.0".into() },
                pb::SpokeInfo { region: "eu".into(), node: "b".into(), agent_version: "0.1.0".into() },
                pb::SpokeInfo { region: "eu".into(), node: "c".into(), agent_version: String::new() },
            ],
        };
        let v = VersionsInfo::new("0.2.0", info);
        assert_eq!(v.spokes.iter().map(|s| s.skew).collect::<Vec<_>>(), [false, true, true]);
        let text = v.text(false);
        assert!(text.contains("yes (hub 0.2.0)") && text.contains("unknown"), "{text}");
    }
}
