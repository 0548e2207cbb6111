//! Streaming AEAD: AES-256-GCM over 64 KiB chunks in the STREAM construction (Hoang, Reyhanitabar,
//! Rogaway, Vizár 2015).
//!
//! Layout: a 16-byte header `"TSRA" || version (1) || chunk size (u32 BE) || nonce prefix (7)`,
//! then the sealed chunks (`ciphertext || 16-byte tag`). Chunk `i` is sealed with nonce
//! `prefix || i (u32 BE) || last (1 byte: 1 for the final chunk, else 0)` and associated data
//! `header || artifact id`. Hence a chunk cannot be moved (its index is in the nonce), the
//! stream cannot be cut short at a chunk boundary (the new final chunk was not sealed as
//! final), a chunk cannot be dropped, and one artifact's ciphertext does not decrypt as another.
//! Nothing is released before its chunk authenticates.

use bytes::{Bytes, BytesMut};

use super::{Aes256Gcm, CryptoError};

pub const CHUNK: usize = 64 * 1024;
pub const HEADER_LEN: usize = 16;
const TAG_LEN: usize = 16;
const MAGIC: &[u8; 4] = b"TSRA";
const VERSION: u8 = 1;

fn nonce(prefix: &[u8; 7], index: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&index.to_be_bytes());
    n[11] = last as u8;
    n
}

fn aad(header: &[u8; HEADER_LEN], artifact: &uuid::Uuid) -> [u8; HEADER_LEN + 16] {
    let mut a = [0u8; HEADER_LEN + 16];
    a[..HEADER_LEN].copy_from_slice(header);
    a[HEADER_LEN..].copy_from_slice(artifact.as_bytes());
    a
}

/// Encrypts a byte stream of any length fed in pieces of any size.
pub struct Encryptor {
    cipher: Aes256Gcm,
    prefix: [u8; 7],
    aad: [u8; HEADER_LEN + 16],
    index: u32,
    pending: BytesMut,
    header: Option<[u8; HEADER_LEN]>,
}

impl Encryptor {
    pub fn new(key: &[u8; 32], artifact: &uuid::Uuid) -> Self {
        let mut prefix = [0u8; 7];
        rand::fill(&mut prefix);
        let mut header = [0u8; HEADER_LEN];
        header[..4].copy_from_slice(MAGIC);
        header[4] = VERSION;
        header[5..9].copy_from_slice(&(CHUNK as u32).to_be_bytes());
        header[9..].copy_from_slice(&prefix);
        Self {
            cipher: Aes256Gcm::new(key),
            prefix,
            aad: aad(&header, artifact),
            index: 0,
            pending: BytesMut::with_capacity(CHUNK),
            header: Some(header),
        }
    }

    fn seal(&mut self, mut chunk: BytesMut, last: bool) -> BytesMut {
        let n = nonce(&self.prefix, self.index, last);
        let tag = self.cipher.seal(n, &self.aad, &mut chunk);
        chunk.extend_from_slice(&tag);
        self.index = self.index.checked_add(1).expect("artifact larger than 256 TiB");
        chunk
    }

    /// Feeds plaintext; returns whatever ciphertext is complete (header first).
    pub fn update(&mut self, mut data: &[u8]) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Some(header) = self.header.take() {
            out.push(Bytes::copy_from_slice(&header));
        }
        while !data.is_empty() {
            // A full chunk is only sealed once more data shows it is not the last one.
            if self.pending.len() == CHUNK {
                let chunk = std::mem::replace(&mut self.pending, BytesMut::with_capacity(CHUNK + TAG_LEN));
                out.push(self.seal(chunk, false).freeze());
            }
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        out
    }

    /// Seals the final chunk (possibly empty).
    pub fn finish(mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        if let Some(header) = self.header.take() {
            out.push(Bytes::copy_from_slice(&header));
        }
        let chunk = std::mem::take(&mut self.pending);
        out.push(self.seal(chunk, true).freeze());
        out
    }
}

/// Decrypts a stream produced by `Encryptor`, fed in pieces of any size. Plaintext is released
/// chunk by chunk, each only after it authenticated.
pub struct Decryptor {
    key: [u8; 32],
    artifact: uuid::Uuid,
    state: Option<(Aes256Gcm, [u8; 7], [u8; HEADER_LEN + 16], usize)>,
    index: u32,
    buffer: BytesMut,
}

impl Decryptor {
    pub fn new(key: &[u8; 32], artifact: &uuid::Uuid) -> Self {
        Self { key: *key, artifact: *artifact, state: None, index: 0, buffer: BytesMut::new() }
    }

    fn open(&mut self, mut sealed: BytesMut, last: bool) -> Result<Bytes, CryptoError> {
        let (cipher, prefix, aad, _) = self.state.as_ref().ok_or(CryptoError::Header)?;
        if sealed.len() < TAG_LEN {
            return Err(CryptoError::Authentication);
        }
        let tag = sealed.split_off(sealed.len() - TAG_LEN);
        let tag_bytes: [u8; TAG_LEN] = tag[..].try_into().expect("16 bytes");
        cipher.open(nonce(prefix, self.index, last), aad, &mut sealed, tag_bytes)?;
        self.index = self.index.checked_add(1).ok_or(CryptoError::Authentication)?;
        Ok(sealed.freeze())
    }

    pub fn update(&mut self, data: &[u8]) -> Result<Vec<Bytes>, CryptoError> {
        self.buffer.extend_from_slice(data);
        if self.state.is_none() {
            if self.buffer.len() < HEADER_LEN {
                return Ok(Vec::new());
            }
            let header: [u8; HEADER_LEN] = self.buffer.split_to(HEADER_LEN)[..].try_into().expect("16 bytes");
            if &header[..4] != MAGIC || header[4] != VERSION {
                return Err(CryptoError::Header);
            }
            let chunk = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes")) as usize;
            if chunk == 0 || chunk > 16 * 1024 * 1024 {
                return Err(CryptoError::Header);
            }
            let prefix: [u8; 7] = header[9..].try_into().expect("7 bytes");
            let cipher = Aes256Gcm::new(&self.key);
            self.state = Some((cipher, prefix, aad(&header, &self.artifact), chunk));
        }
        let sealed_len = self.state.as_ref().map(|s| s.3).unwrap_or(CHUNK) + TAG_LEN;
        let mut out = Vec::new();
        // Keep the last full sealed chunk back: only `finish` knows whether it is the final one.
        while self.buffer.len() > sealed_len {
            let sealed = self.buffer.split_to(sealed_len);
            out.push(self.open(sealed, false)?);
        }
        Ok(out)
    }

    /// The end of the stream: authenticates the final chunk. A stream cut anywhere fails here.
    pub fn finish(mut self) -> Result<Bytes, CryptoError> {
        if self.state.is_none() {
            return Err(CryptoError::Header);
        }
        let sealed = std::mem::take(&mut self.buffer);
        self.open(sealed, true)
    }
}

/// The size of the ciphertext for `plain` bytes of plaintext.
pub fn sealed_len(plain: u64) -> u64 {
    let chunks = plain.div_ceil(CHUNK as u64).max(1);
    HEADER_LEN as u64 + plain + chunks * TAG_LEN as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encrypt(key: &[u8; 32], id: &uuid::Uuid, data: &[u8], piece: usize) -> Vec<u8> {
        let mut e = Encryptor::new(key, id);
        let mut out = Vec::new();
        for part in data.chunks(piece.max(1)) {
            e.update(part).iter().for_each(|b| out.extend_from_slice(b));
        }
        e.finish().iter().for_each(|b| out.extend_from_slice(b));
        out
    }

    fn decrypt(key: &[u8; 32], id: &uuid::Uuid, data: &[u8], piece: usize) -> Result<Vec<u8>, CryptoError> {
        let mut d = Decryptor::new(key, id);
        let mut out = Vec::new();
        for part in data.chunks(piece.max(1)) {
            d.update(part)?.iter().for_each(|b| out.extend_from_slice(b));
        }
        out.extend_from_slice(&d.finish()?);
        Ok(out)
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_boundary_and_piece_size() {
        let key = *super::super::random_key();
        let id = uuid::Uuid::new_v4();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let data = sample(len);
            for piece in [1000, CHUNK, 7 * CHUNK] {
                let sealed = encrypt(&key, &id, &data, piece);
                assert_eq!(sealed.len() as u64, sealed_len(len as u64), "len {len}");
                assert_eq!(decrypt(&key, &id, &sealed, piece + 3).unwrap(), data, "len {len} piece {piece}");
            }
        }
    }

    #[test]
    fn any_change_reorder_or_cut_fails_to_decrypt() {
        let key = *super::super::random_key();
        let id = uuid::Uuid::new_v4();
        let data = sample(3 * CHUNK + 100);
        let sealed = encrypt(&key, &id, &data, CHUNK);
        let sealed_chunk = CHUNK + TAG_LEN;

        for position in [0, 5, HEADER_LEN, HEADER_LEN + 100, sealed.len() - 1] {
            let mut flipped = sealed.clone();
            flipped[position] ^= 0x01;
            assert!(decrypt(&key, &id, &flipped, CHUNK).is_err(), "flip at {position}");
        }
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + sealed_chunk);
        let first = sealed[a..a + sealed_chunk].to_vec();
        swapped.copy_within(b..b + sealed_chunk, a);
        swapped[b..b + sealed_chunk].copy_from_slice(&first);
        assert!(decrypt(&key, &id, &swapped, CHUNK).is_err(), "swapped chunks");
        let cut = &sealed[..HEADER_LEN + 2 * sealed_chunk];
        assert!(decrypt(&key, &id, cut, CHUNK).is_err(), "truncated at a chunk boundary");
        assert!(decrypt(&key, &id, &sealed[..sealed.len() - 1], CHUNK).is_err(), "truncated mid-chunk");
        let mut dropped = sealed[..HEADER_LEN + sealed_chunk].to_vec();
        dropped.extend_from_slice(&sealed[HEADER_LEN + 2 * sealed_chunk..]);
        assert!(decrypt(&key, &id, &dropped, CHUNK).is_err(), "dropped chunk");
        assert!(decrypt(&*super::super::random_key(), &id, &sealed, CHUNK).is_err(), "wrong key");
        assert!(decrypt(&key, &uuid::Uuid::new_v4(), &sealed, CHUNK).is_err(), "another artifact's id");
        assert!(decrypt(&key, &id, &sealed[..10], CHUNK).is_err(), "header only");
    }

    #[test]
    fn ciphertext_holds_no_window_of_the_plaintext() {
        let key = *super::super::random_key();
        let data = sample(5 * CHUNK);
        let sealed = encrypt(&key, &uuid::Uuid::new_v4(), &data, CHUNK);
        let marker = &data[1000..1032];
        assert!(!sealed.windows(32).any(|w| w == marker));
    }
}
