//! Reading artifacts back: the one path by which plaintext comes into existence, and only in
//! memory. `load` is what inference workers call; `download` streams the same plaintext to an
//! authorised client. Every chunk authenticates before it is released, and the whole artifact
//! must match the SHA-256 recorded at upload.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::BATCH_BYTES;
use super::error::{ArtifactError, RegistryError};
use super::keys::KeyService;
use super::model::{ModelName, StoredVersion, VersionRef};
use super::sealed::SealedRef;
use super::service::RegistryService;
use crate::audit::{AuditActor, AuditEvent, Outcome};
use crate::crypto::Key;
use crate::crypto::stream::Decryptor;
use crate::request::RequestInfo;
use crate::tenancy::TenantId;
use crate::tenancy::db::TenantTx;

/// A decrypted, verified artifact, in memory only.
pub struct LoadedArtifact {
    pub version: StoredVersion,
    pub bytes: Vec<u8>,
}

struct Opener {
    decryptor: Decryptor,
    digest: Sha256,
    /// Plaintext of the previous batch, hashed on a second core while this batch decrypts.
    unhashed: Vec<Bytes>,
    size: u64,
    expected_sha256: [u8; 32],
    expected_size: u64,
}

impl Opener {
    fn feed(&mut self, pieces: &[Bytes]) -> Result<Vec<Bytes>, ArtifactError> {
        let previous = std::mem::take(&mut self.unhashed);
        let (digest, decryptor) = (&mut self.digest, &mut self.decryptor);
        let opened = std::thread::scope(|scope| {
            let hashing = scope.spawn(move || previous.iter().for_each(|p| digest.update(p)));
            let mut out = Vec::new();
            let mut result = Ok(());
            for piece in pieces {
                match decryptor.update(piece) {
                    Ok(plain) => out.extend(plain),
                    Err(_) => {
                        result = Err(ArtifactError::Tampered);
                        break;
                    }
                }
            }
            hashing.join().expect("hashing does not panic");
            result.map(|()| out)
        })?;
        self.size += opened.iter().map(|b| b.len() as u64).sum::<u64>();
        self.unhashed = opened.clone();
        Ok(opened)
    }

    fn finish(mut self) -> Result<Bytes, ArtifactError> {
        let last = self.decryptor.finish().map_err(|_| ArtifactError::Tampered)?;
        for piece in self.unhashed.iter().chain(std::iter::once(&last)) {
            self.digest.update(piece);
        }
        self.size += last.len() as u64;
        let digest: [u8; 32] = self.digest.finalize().into();
        if digest != self.expected_sha256 || self.size != self.expected_size {
            return Err(ArtifactError::Checksum);
        }
        Ok(last)
    }
}

/// Decrypts `source` on the blocking pool, one batch at a time, into a bounded channel. The
/// final verdict (tag of the last chunk, SHA-256, size) arrives before the last bytes do.
fn decrypt_into_channel(
    mut source: BoxStream<'static, object_store::Result<Bytes>>,
    mut opener: Opener,
) -> mpsc::Receiver<Result<Bytes, ArtifactError>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut batch = Vec::new();
        let mut batched = 0usize;
        loop {
            let next = source.next().await;
            let done = next.is_none();
            match next {
                Some(Ok(piece)) => {
                    batched += piece.len();
                    batch.push(piece);
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(ArtifactError::Storage(e.to_string()))).await;
                    return;
                }
                None => {}
            }
            if batched >= BATCH_BYTES || done {
                let pieces = std::mem::take(&mut batch);
                batched = 0;
                let Ok((back, plain)) = tokio::task::spawn_blocking(move || {
                    let plain = opener.feed(&pieces);
                    (opener, plain)
                })
                .await
                else {
                    return;
                };
                opener = back;
                match plain {
                    Ok(chunks) => {
                        for chunk in chunks {
                            if tx.send(Ok(chunk)).await.is_err() {
                                return; // the reader went away
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            if done {
                break;
            }
        }
        let last = tokio::task::spawn_blocking(move || opener.finish()).await;
        if let Ok(last) = last {
            let _ = tx.send(last).await;
        }
    });
    rx
}

impl RegistryService {
    /// Resolves the version and unwraps its data key, in one tenant transaction.
    async fn open_version(
        &self,
        tenant: TenantId,
        name: &ModelName,
        version: Option<&VersionRef>,
    ) -> Result<(StoredVersion, Result<Key, ArtifactError>), RegistryError> {
        let mut tx = TenantTx::begin(&self.pool, tenant).await?;
        let stored = Self::stored_version(&mut tx, name, version).await?;
        let tenant_key = self.keys.tenant_key(&mut tx, stored.tenant_key_id).await?;
        tx.commit().await?;
        let data_key = KeyService::unwrap_data_key(&tenant_key, stored.view.id, &stored.wrapped_data_key).map_err(|_| ArtifactError::Key);
        Ok((stored, data_key))
    }

    pub(super) async fn plaintext_channel(
        &self,
        sealed: &SealedRef<'_>,
        data_key: &Key,
    ) -> Result<mpsc::Receiver<Result<Bytes, ArtifactError>>, ArtifactError> {
        let source = self.store.read(sealed.object_key, sealed.stored_bytes).await.map_err(|e| ArtifactError::Storage(e.to_string()))?;
        let opener = Opener {
            decryptor: Decryptor::new(data_key, &sealed.id),
            digest: Sha256::new(),
            unhashed: Vec::new(),
            size: 0,
            expected_sha256: sealed.sha256,
            expected_size: sealed.size,
        };
        Ok(decrypt_into_channel(source, opener))
    }

    /// The whole plaintext of a sealed object, verified, in memory.
    pub(super) async fn read_verified(&self, sealed: &SealedRef<'_>, key: &Key) -> Result<Vec<u8>, ArtifactError> {
        let mut rx = self.plaintext_channel(sealed, key).await?;
        let mut bytes = Vec::with_capacity(sealed.size as usize);
        while let Some(chunk) = rx.recv().await {
            bytes.extend_from_slice(&chunk?);
        }
        if bytes.len() as u64 != sealed.size {
            // The pipeline stopped without a verdict (its task was cancelled).
            return Err(ArtifactError::Checksum);
        }
        Ok(bytes)
    }

    /// Resolve → fetch → decrypt and verify into memory. What inference workers call. A
    /// refusal is audited as `model.load_failed` with its reason; success as `model.loaded`.
    pub async fn load(
        &self,
        actor: AuditActor,
        tenant: TenantId,
        name: &ModelName,
        version: Option<&VersionRef>,
        info: &RequestInfo,
    ) -> Result<LoadedArtifact, RegistryError> {
        let (stored, data_key) = self.open_version(tenant, name, version).await?;
        let bytes = match data_key {
            Ok(key) => match SealedRef::of_version(&stored) {
                Ok(sealed) => self.read_verified(&sealed, &key).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let event = AuditEvent::new(Some(tenant), actor, if bytes.is_ok() { "model.loaded" } else { "model.load_failed" })
            .resource("model_version", stored.view.id)
            .outcome(if bytes.is_ok() { Outcome::Success } else { Outcome::Failure });
        let details = json!({ "model": name.as_str(), "version": stored.view.version });
        match bytes {
            Ok(bytes) => {
                self.record_alone(info, vec![event.details(details)]).await?;
                Ok(LoadedArtifact { version: stored, bytes })
            }
            Err(e) => {
                let mut details = details;
                details["reason"] = json!(e.to_string());
                self.record_alone(info, vec![event.details(details)]).await?;
                tracing::error!(model = name.as_str(), version = stored.view.version, error = %e, "artifact refused to load");
                Err(RegistryError::Unloadable { model: name.to_string(), version: stored.view.version, reason: e })
            }
        }
    }

    /// Audits the download, then streams the verified plaintext. A chunk that fails to
    /// authenticate ends the stream with an error, so the client never gets unverified bytes
    /// and sees a broken transfer rather than a complete-looking wrong file.
    pub async fn download(
        &self,
        actor: AuditActor,
        tenant: TenantId,
        name: &ModelName,
        version: Option<&VersionRef>,
        info: &RequestInfo,
    ) -> Result<(StoredVersion, impl futures::Stream<Item = Result<Bytes, std::io::Error>> + use<>), RegistryError> {
        let (stored, data_key) = self.open_version(tenant, name, version).await?;
        let unavailable = |e: ArtifactError| {
            tracing::error!(model = name.as_str(), error = %e, "artifact cannot be read");
            RegistryError::Unreadable { model: name.to_string(), version: stored.view.version, reason: e }
        };
        let data_key = data_key.map_err(unavailable)?;
        let sealed = SealedRef::of_version(&stored).map_err(unavailable)?;
        let mut rx = self.plaintext_channel(&sealed, &data_key).await.map_err(unavailable)?;
        // A wrong key or a tampered first chunk is still answerable with a problem document;
        // later failures can only cut the transfer.
        let first = match rx.recv().await {
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(e)) => return Err(unavailable(e)),
            None => None,
        };
        let event = AuditEvent::new(Some(tenant), actor, "model.version_downloaded")
            .resource("model_version", stored.view.id)
            .details(json!({ "model": name.as_str(), "version": stored.view.version, "size_bytes": stored.view.size_bytes }));
        self.record_alone(info, vec![event]).await?;
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
        let stream = futures::stream::iter(first.map(Ok)).chain(rest).map(|item| {
            item.map_err(|e| {
                tracing::error!(error = %e, "artifact failed verification during download");
                std::io::Error::other(e.to_string())
            })
        });
        Ok((stored, stream))
    }
}
