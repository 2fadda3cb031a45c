//! Local tables' object store: `object_store`'s `LocalFileSystem`, with a listing that costs
//! what is new instead of what the log holds.
//!
//! Every Delta snapshot update lists the table's `_delta_log` from the version it has
//! (`list_with_offset`). On object storage that is a `start-after` listing and costs the new
//! entries. `LocalFileSystem` walks the whole directory instead and turns every entry into an
//! object path (URL encoding, path parsing) before it compares it with the offset. A streaming
//! table commits several times a second, so its log grows by thousands of entries an hour, and
//! each commit, each reader's refresh and each derivation paid for all of them: after 30
//! minutes of `up --rate 20000` (about 6,000 commits to telemetry) those listings took 30 % of
//! the process's CPU (`perf`), and the share grows with the log.
//!
//! [`LocalStore::list_with_offset`] reads the directory's names (one `getdents` per few hundred
//! entries), compares them with the offset as strings, and asks for the metadata of only the
//! entries after it. Anything it does not recognise (a subdirectory, a symlink, a name that is
//! not plain ASCII) falls back to `LocalFileSystem`'s own listing, so the results are the same;
//! everything else is `LocalFileSystem` unchanged.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use deltalake::logstore::object_store::local::LocalFileSystem;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use deltalake::logstore::{
    DeltaIOStorageBackend, ObjectStoreFactory, ObjectStoreRef, StorageConfig,
    object_store_factories,
};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use url::Url;

/// Makes deltalake open `file://` tables through [`LocalStore`]. Idempotent.
pub fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        object_store_factories().insert(
            Url::parse("file://").expect("a valid URL"),
            Arc::new(LocalStoreFactory),
        );
    });
}

struct LocalStoreFactory;

impl ObjectStoreFactory for LocalStoreFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> deltalake::DeltaResult<(ObjectStoreRef, Path)> {
        // As deltalake's own factory for `file://`: a file system store at `/`, the table's
        // path inside it, and deltalake's IO runtime around it when one is configured.
        let path = Path::from_url_path(url.path()).map_err(object_store::Error::from)?;
        let store = LocalStore(Arc::new(LocalFileSystem::new()));
        let store: ObjectStoreRef = match &config.runtime {
            Some(runtime) => Arc::new(DeltaIOStorageBackend::new(store, runtime.clone())),
            None => Arc::new(store),
        };
        Ok((store, path))
    }
}

/// `LocalFileSystem` rooted at `/`, with [`ObjectStore::list_with_offset`] reading names first.
#[derive(Debug, Clone)]
pub struct LocalStore(Arc<LocalFileSystem>);

impl fmt::Display for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalStore({})", self.0)
    }
}

/// The names of the entries of `/{prefix}` whose object paths sort after `offset`, as object
/// paths; `None` when the directory holds anything the fast path does not handle.
fn names_after(prefix: &str, offset: &str) -> std::io::Result<Option<Vec<String>>> {
    // Within the directory, `prefix/name > offset` is `name > rest` when the offset is in it
    // (the usual case: the kernel lists from a version's file), so most names are compared
    // without building their paths.
    let within = offset
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|rest| !rest.contains('/'));
    let mut after = Vec::new();
    for entry in std::fs::read_dir(format!("/{prefix}"))? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Ok(None);
        };
        if is_upload_in_progress(&name) {
            continue;
        }
        if !entry.file_type()?.is_file() || !plain(&name) {
            return Ok(None);
        }
        let location = format!("{prefix}/{name}");
        let later = match within {
            Some(rest) => name.as_str() > rest,
            None => location.as_str() > offset,
        };
        if later {
            after.push(location);
        }
    }
    after.sort_unstable();
    Ok(Some(after))
}

/// A name whose object path is the name itself: what Delta writes in a log (digits, `.json`,
/// `.checkpoint.parquet`, `_last_checkpoint`, `.crc`, temporary commit files). Any other name
/// (`#`, which object paths encode, for one) sends the listing to `LocalFileSystem`.
fn plain(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `LocalFileSystem` hides `name#123` files, its multipart uploads in progress.
fn is_upload_in_progress(name: &str) -> bool {
    match name.split_once('#') {
        Some((_, suffix)) => !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// A prefix the fast path can map to a directory by itself (no percent-encoding involved).
fn plain_prefix(prefix: &Path) -> bool {
    let text = prefix.as_ref();
    !text.is_empty() && prefix.parts().all(|p| plain(p.as_ref()))
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let Some(prefix) = prefix.filter(|p| plain_prefix(p)).cloned() else {
            return self.0.list_with_offset(prefix, offset);
        };
        let (inner, offset) = (self.0.clone(), offset.clone());
        stream::once(async move {
            let (p, o) = (prefix.to_string(), offset.to_string());
            let names = tokio::task::spawn_blocking(move || names_after(&p, &o)).await;
            let Ok(Ok(Some(names))) = names else {
                // Not a plain directory of files (or not there): the store's own walk.
                return inner.list_with_offset(Some(&prefix), &offset);
            };
            stream::iter(names)
                .then(move |location| {
                    let inner = inner.clone();
                    async move {
                        let head = GetOptions {
                            head: true,
                            ..GetOptions::default()
                        };
                        match inner.get_opts(&Path::from(location), head).await {
                            Ok(found) => Ok(Some(found.meta)),
                            // Deleted between the two steps (a vacuum, a log cleanup): as the
                            // walk, which skips entries that vanish under it.
                            Err(object_store::Error::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                })
                .try_filter_map(|meta| async move { Ok(meta) })
                .boxed()
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `LocalFileSystem` lists after `offset` under `prefix`, sorted, as (path, size, etag).
    async fn listing(
        store: &dyn ObjectStore,
        prefix: &Path,
        offset: &Path,
    ) -> Vec<(String, u64, Option<String>)> {
        let mut out: Vec<_> = store
            .list_with_offset(Some(prefix), offset)
            .map_ok(|m| (m.location.to_string(), m.size, m.e_tag))
            .try_collect()
            .await
            .unwrap();
        out.sort();
        out
    }

    fn under(dir: &std::path::Path) -> Path {
        Path::from_filesystem_path(dir).unwrap()
    }

    /// The fast listing gives exactly what `LocalFileSystem` gives, for every offset, in a log
    /// with commits, a checkpoint, `_last_checkpoint`, an upload in progress (hidden) and a
    /// temporary commit file.
    #[tokio::test]
    async fn lists_after_an_offset_what_the_file_system_store_lists() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("_delta_log");
        std::fs::create_dir(&log).unwrap();
        let mut names: Vec<String> = (0..30).map(|v| format!("{v:020}.json")).collect();
        names.push(format!("{:020}.checkpoint.parquet", 20));
        names.push("_last_checkpoint".into());
        names.push("_last_checkpoint#7".into());
        names.push("_commit_1b2c.json.tmp".into());
        for (i, n) in names.iter().enumerate() {
            std::fs::write(log.join(n), vec![b'x'; i + 1]).unwrap();
        }
        let fast = LocalStore(Arc::new(LocalFileSystem::new()));
        let walk = LocalFileSystem::new();
        let prefix = under(&log);
        let mut offsets: Vec<String> = ["", "00000000000000000019.json", "_last", "zzz"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        offsets.extend(names.iter().cloned());
        for o in offsets {
            let offset = Path::from(format!("{prefix}/{o}"));
            let expected = listing(&walk, &prefix, &offset).await;
            assert_eq!(
                listing(&fast, &prefix, &offset).await,
                expected,
                "after {o}"
            );
        }
        // The log is listed by names, not by the fallback walk.
        assert!(names_after(prefix.as_ref(), "").unwrap().is_some());
        let all = listing(&fast, &prefix, &Path::from(format!("{prefix}/"))).await;
        assert_eq!(
            all.len(),
            names.len() - 1,
            "the upload in progress is hidden"
        );
    }

    /// A directory the fast path does not handle (here: a subdirectory, listed recursively)
    /// is listed by `LocalFileSystem` itself, with the same results; a missing one is empty.
    #[tokio::test]
    async fn anything_else_is_listed_by_the_file_system_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("t/part=1")).unwrap();
        std::fs::write(dir.path().join("t/a.parquet"), b"a").unwrap();
        std::fs::write(dir.path().join("t/part=1/b.parquet"), b"bb").unwrap();
        let (fast, walk) = (
            LocalStore(Arc::new(LocalFileSystem::new())),
            LocalFileSystem::new(),
        );
        let prefix = under(&dir.path().join("t"));
        let offset = Path::from(format!("{prefix}/"));
        let expected = listing(&walk, &prefix, &offset).await;
        assert_eq!(expected.len(), 2);
        assert_eq!(listing(&fast, &prefix, &offset).await, expected);
        // A name object paths would encode (`#` not marking an upload) takes the walk too.
        std::fs::create_dir(dir.path().join("h")).unwrap();
        std::fs::write(dir.path().join("h/a#b"), b"a").unwrap();
        std::fs::write(dir.path().join("h/c.json"), b"c").unwrap();
        let hashed = under(&dir.path().join("h"));
        assert!(names_after(hashed.as_ref(), "").unwrap().is_none());
        let offset = Path::from(format!("{hashed}/"));
        let expected = listing(&walk, &hashed, &offset).await;
        assert_eq!(listing(&fast, &hashed, &offset).await, expected);
        let missing = Path::from(format!("{}/missing", under(dir.path())));
        assert!(
            listing(&fast, &missing, &Path::from(format!("{missing}/0")))
                .await
                .is_empty()
        );
    }
}
