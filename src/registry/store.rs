//! Where encrypted artifacts live: an `object_store` (a local directory by default, any
//! S3-compatible store by configuration). Only ciphertext ever passes through here.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use uuid::Uuid;

use crate::config::{StorageBackend, StorageSettings};

/// Parts of a multipart upload; S3 needs at least 5 MiB per part but the last.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Size of one ranged read when fetching an artifact.
const READ_BYTES: usize = 4 * 1024 * 1024;
/// Parts in flight at once while uploading: bounds memory to about this many parts.
const PARTS_IN_FLIGHT: usize = 2;

#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
}

impl ArtifactStore {
    pub fn from_settings(settings: &StorageSettings) -> anyhow::Result<Self> {
        let inner: Arc<dyn ObjectStore> = match settings.backend {
            StorageBackend::Local => {
                std::fs::create_dir_all(&settings.path)
                    .map_err(|e| anyhow::anyhow!("registry.storage.path {}: {e}", settings.path.display()))?;
                Arc::new(LocalFileSystem::new_with_prefix(&settings.path)?)
            }
            StorageBackend::S3 => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(settings.s3_bucket.clone().unwrap_or_default())
                    .with_allow_http(settings.s3_allow_http);
                if let Some(endpoint) = &settings.s3_endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &settings.s3_region {
                    builder = builder.with_region(region);
                }
                Arc::new(builder.build()?)
            }
        };
        Ok(Self { inner })
    }

    /// The store itself, for the audit trail's digests (kept beside the artifacts, apart from
    /// the database).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    /// Artifacts are keyed by tenant and artifact id only: names and versions live in
    /// Postgres, so nothing about a model leaks through the object store's listing.
    pub fn key_for(tenant: Uuid, artifact: Uuid) -> String {
        format!("tenants/{tenant}/artifacts/{artifact}")
    }

    pub async fn writer(&self, key: &str) -> object_store::Result<ArtifactWriter> {
        let upload = self.inner.put_multipart(&Path::from(key)).await?;
        Ok(ArtifactWriter { inner: WriteMultipart::new_with_chunk_size(upload, PART_BYTES) })
    }

    /// The object as a stream of large ranged reads, two in flight: a plain `get` of the
    /// local backend reads 8 KiB at a time, each on the blocking pool. Refuses an object whose
    /// size is not `expected` (cut short, or grown by appended bytes).
    pub async fn read(&self, key: &str, expected: u64) -> object_store::Result<BoxStream<'static, object_store::Result<Bytes>>> {
        let path = Path::from(key);
        let size = self.inner.head(&path).await?.size;
        if size != expected {
            return Err(object_store::Error::Generic {
                store: "artifacts",
                source: format!("stored object has {size} bytes, expected {expected}").into(),
            });
        }
        let store = self.inner.clone();
        let ranges: Vec<std::ops::Range<u64>> = (0..size).step_by(READ_BYTES).map(|s| s..(s + READ_BYTES as u64).min(size)).collect();
        Ok(futures::stream::iter(ranges)
            .map(move |range| {
                let (store, path) = (store.clone(), path.clone());
                async move { store.get_range(&path, range).await }
            })
            .buffered(2)
            .boxed())
    }

    pub async fn delete(&self, key: &str) -> object_store::Result<()> {
        self.inner.delete(&Path::from(key)).await
    }
}

/// A multipart upload in progress. Dropping it without `finish` leaves nothing visible; call
/// `abort` to also free what was staged.
pub struct ArtifactWriter {
    inner: WriteMultipart,
}

impl ArtifactWriter {
    pub async fn write(&mut self, pieces: Vec<Bytes>) -> object_store::Result<()> {
        for piece in pieces {
            self.inner.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            self.inner.put(piece);
        }
        Ok(())
    }

    pub async fn finish(self) -> object_store::Result<()> {
        self.inner.finish().await.map(|_| ())
    }

    pub async fn abort(self) {
        if let Err(e) = self.inner.abort().await {
            tracing::warn!(error = %e, "aborting an artifact upload failed; staged parts may remain");
        }
    }
}
