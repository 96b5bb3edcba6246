//! Segmented streaming encryption for attachments: the STREAM construction (Hoang,
//! Reyhanitabar, Rogaway and Vizár, "Online authenticated-encryption and its nonce-reuse
//! misuse-resistance", CRYPTO 2015) over the partition's AES-256-GCM-SIV data key.
//!
//! A stored blob is a header (magic `BKS1`, segment size, a random 7-byte nonce prefix)
//! followed by segments of `segment size` plaintext bytes each (the last one shorter, possibly
//! empty), each sealed with the nonce `prefix || segment index (4 bytes) || last flag (1 byte)`
//! and the header plus the caller's context (the blob's id and patient) as associated data.
//! So memory stays at one segment whatever the size, any segment can be opened alone (range
//! reads), and a dropped final segment (truncation), a reordered, repeated or edited segment,
//! or a segment spliced in from another blob fails to open. Two blobs of one patient drawing
//! the same 56-bit prefix would reveal only which of their segments at the same index are
//! identical (GCM-SIV resists nonce reuse), nothing else.

use std::ops::Deref;

use aws_lc_rs::aead::{Aad, Nonce};
use zeroize::Zeroizing;

use crate::{DataKey, VaultError, random_bytes};

const MAGIC: &[u8; 4] = b"BKS1";
/// Bytes of the header in front of the segments.
pub const STREAM_HEADER_LEN: usize = 4 + 4 + 7;
/// Bytes each segment adds (the authentication tag).
pub const STREAM_TAG_LEN: usize = 16;
/// The segment size blobs are written with.
pub const STREAM_SEGMENT: u32 = 64 * 1024;
/// Segments per blob at most (the index is 32 bits): 256 TiB at 64 KiB segments.
const MAX_SEGMENTS: u64 = u32::MAX as u64;

fn nonce(prefix: &[u8; 7], index: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn associated(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut a = b"brankas-stream-v1".to_vec();
    a.extend_from_slice(header);
    a.extend_from_slice(&(context.len() as u64).to_be_bytes());
    a.extend_from_slice(context);
    a
}

/// Seals one blob segment by segment, in order. `K` is how the key is held: a borrow, or an
/// `Arc<DataKey>` for a sealer that outlives the caller's frame (a streamed upload).
pub struct StreamSealer<K: Deref<Target = DataKey>> {
    key: K,
    aad: Vec<u8>,
    prefix: [u8; 7],
    segment: usize,
    next: u64,
    finished: bool,
}

impl<K: Deref<Target = DataKey>> StreamSealer<K> {
    /// The plaintext bytes each segment but the last must hold.
    pub fn segment_size(&self) -> usize {
        self.segment
    }

    /// Seals the next segment: exactly [`StreamSealer::segment_size`] bytes, or fewer (even
    /// none) for the last one, which must be marked `last`.
    pub fn seal(&mut self, plaintext: &[u8], last: bool) -> Result<Vec<u8>, VaultError> {
        if self.finished || plaintext.len() > self.segment || (!last && plaintext.len() != self.segment) || self.next >= MAX_SEGMENTS {
            return Err(VaultError::Crypto);
        }
        let mut out = Vec::with_capacity(plaintext.len() + STREAM_TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.key.key().seal_in_place_separate_tag(nonce(&self.prefix, self.next as u32, last), Aad::from(&self.aad[..]), &mut out)?;
        out.extend_from_slice(tag.as_ref());
        self.next += 1;
        self.finished = last;
        Ok(out)
    }
}

/// Opens the segments of one blob, in any order.
pub struct StreamOpener<K: Deref<Target = DataKey>> {
    key: K,
    aad: Vec<u8>,
    prefix: [u8; 7],
    segment: usize,
}

impl<K: Deref<Target = DataKey>> StreamOpener<K> {
    pub fn segment_size(&self) -> usize {
        self.segment
    }

    /// For a blob whose segments take `sealed_len` bytes (header excluded): how many
    /// segments it has and how long its plaintext is; `None` if no blob has that length.
    pub fn layout(&self, sealed_len: u64) -> Option<(u64, u64)> {
        let full = (self.segment + STREAM_TAG_LEN) as u64;
        if sealed_len < STREAM_TAG_LEN as u64 {
            return None;
        }
        let segments = sealed_len.div_ceil(full).max(1);
        let last = sealed_len - (segments - 1) * full;
        if last < STREAM_TAG_LEN as u64 || segments > MAX_SEGMENTS {
            return None;
        }
        Some((segments, (segments - 1) * self.segment as u64 + last - STREAM_TAG_LEN as u64))
    }

    /// Opens segment `index`; `last` says whether it is the blob's final segment (from
    /// [`StreamOpener::layout`]). Fails unless this segment was sealed at exactly this place.
    pub fn open(&self, index: u64, last: bool, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if index >= MAX_SEGMENTS || sealed.len() < STREAM_TAG_LEN || sealed.len() > self.segment + STREAM_TAG_LEN {
            return Err(VaultError::Integrity);
        }
        let mut buf = Zeroizing::new(sealed.to_vec());
        let n = self.key.key().open_in_place(nonce(&self.prefix, index as u32, last), Aad::from(&self.aad[..]), &mut buf[..]).map_err(|_| VaultError::Integrity)?.len();
        buf.truncate(n);
        Ok(buf)
    }
}

impl DataKey {
    /// Starts sealing a blob bound to `context`; returns the sealer and the header to store
    /// in front of the segments.
    pub fn stream_sealer(&self, context: &[u8]) -> Result<(StreamSealer<&DataKey>, Vec<u8>), VaultError> {
        sealer(self, context)
    }

    /// Opens a blob's header for reading its segments; the `context` must be the one it was
    /// sealed with.
    pub fn stream_opener(&self, context: &[u8], header: &[u8]) -> Result<StreamOpener<&DataKey>, VaultError> {
        opener(self, context, header)
    }
}

/// [`DataKey::stream_sealer`] for any way of holding the key (e.g. `Arc<DataKey>`).
pub fn sealer<K: Deref<Target = DataKey>>(key: K, context: &[u8]) -> Result<(StreamSealer<K>, Vec<u8>), VaultError> {
    let mut prefix = [0u8; 7];
    random_bytes(&mut prefix)?;
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&STREAM_SEGMENT.to_be_bytes());
    header.extend_from_slice(&prefix);
    let aad = associated(&header, context);
    Ok((StreamSealer { key, aad, prefix, segment: STREAM_SEGMENT as usize, next: 0, finished: false }, header))
}

/// [`DataKey::stream_opener`] for any way of holding the key (e.g. `Arc<DataKey>`).
pub fn opener<K: Deref<Target = DataKey>>(key: K, context: &[u8], header: &[u8]) -> Result<StreamOpener<K>, VaultError> {
    if header.len() != STREAM_HEADER_LEN || &header[..4] != MAGIC {
        return Err(VaultError::Integrity);
    }
    let segment = u32::from_be_bytes(header[4..8].try_into().map_err(|_| VaultError::Integrity)?);
    if !(1024..=16 * 1024 * 1024).contains(&segment) {
        return Err(VaultError::Integrity);
    }
    let prefix: [u8; 7] = header[8..15].try_into().map_err(|_| VaultError::Integrity)?;
    Ok(StreamOpener { key, aad: associated(header, context), prefix, segment: segment as usize })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole blob sealed, as header ‖ segments.
    fn seal_all(k: &DataKey, ctx: &[u8], data: &[u8]) -> Vec<u8> {
        let (mut s, mut out) = k.stream_sealer(ctx).unwrap();
        let seg = s.segment_size();
        let mut chunks: Vec<&[u8]> = data.chunks(seg).collect();
        if chunks.last().is_none_or(|c| c.len() == seg) {
            chunks.push(&[]);
        }
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            out.extend(s.seal(c, i + 1 == n).unwrap());
        }
        out
    }

    fn open_all(k: &DataKey, ctx: &[u8], blob: &[u8]) -> Result<Vec<u8>, VaultError> {
        if blob.len() < STREAM_HEADER_LEN {
            return Err(VaultError::Integrity);
        }
        let o = k.stream_opener(ctx, &blob[..STREAM_HEADER_LEN])?;
        let body = &blob[STREAM_HEADER_LEN..];
        let (segments, len) = o.layout(body.len() as u64).ok_or(VaultError::Integrity)?;
        let full = o.segment_size() + STREAM_TAG_LEN;
        let mut out = Vec::with_capacity(len as usize);
        for i in 0..segments {
            let start = i as usize * full;
            let end = (start + full).min(body.len());
            out.extend_from_slice(&o.open(i, i + 1 == segments, &body[start..end])?);
        }
        Ok(out)
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_every_boundary() {
        let k = DataKey::generate().unwrap();
        let s = STREAM_SEGMENT as usize;
        for n in [0, 1, s - 1, s, s + 1, 3 * s, 3 * s + 5] {
            let d = data(n);
            let blob = seal_all(&k, b"Binary/1", &d);
            assert_eq!(open_all(&k, b"Binary/1", &blob).unwrap(), d, "size {n}");
            let o = k.stream_opener(b"Binary/1", &blob[..STREAM_HEADER_LEN]).unwrap();
            assert_eq!(o.layout((blob.len() - STREAM_HEADER_LEN) as u64).unwrap().1, n as u64);
        }
    }

    #[test]
    fn one_segment_opens_alone() {
        let k = DataKey::generate().unwrap();
        let s = STREAM_SEGMENT as usize;
        let d = data(3 * s + 100);
        let blob = seal_all(&k, b"ctx", &d);
        let o = k.stream_opener(b"ctx", &blob[..STREAM_HEADER_LEN]).unwrap();
        let full = s + STREAM_TAG_LEN;
        let seg2 = &blob[STREAM_HEADER_LEN + 2 * full..STREAM_HEADER_LEN + 3 * full];
        assert_eq!(&o.open(2, false, seg2).unwrap()[..], &d[2 * s..3 * s]);
    }

    #[test]
    fn truncation_reordering_editing_and_splicing_are_detected() {
        let k = DataKey::generate().unwrap();
        let s = STREAM_SEGMENT as usize;
        let full = s + STREAM_TAG_LEN;
        let d = data(3 * s + 100);
        let blob = seal_all(&k, b"ctx", &d);
        let h = STREAM_HEADER_LEN;
        // Truncated at a segment boundary: the new final segment was not sealed as final.
        assert!(open_all(&k, b"ctx", &blob[..h + 3 * full]).is_err());
        assert!(open_all(&k, b"ctx", &blob[..h + full]).is_err());
        // Cut inside a segment.
        assert!(open_all(&k, b"ctx", &blob[..blob.len() - 1]).is_err());
        // Two segments swapped.
        let mut swapped = blob.clone();
        swapped[h..h + full].copy_from_slice(&blob[h + full..h + 2 * full]);
        swapped[h + full..h + 2 * full].copy_from_slice(&blob[h..h + full]);
        assert!(open_all(&k, b"ctx", &swapped).is_err());
        // A segment repeated in place of another.
        let mut repeated = blob.clone();
        repeated[h + full..h + 2 * full].copy_from_slice(&blob[h..h + full]);
        assert!(open_all(&k, b"ctx", &repeated).is_err());
        // One bit anywhere, header included.
        for i in [0, 5, 9, h, h + full / 2, blob.len() - 1] {
            let mut e = blob.clone();
            e[i] ^= 1;
            assert!(open_all(&k, b"ctx", &e).is_err(), "flip at {i}");
        }
        // A segment of another blob under the same key and context.
        let other = seal_all(&k, b"ctx", &data(3 * s + 100));
        let mut spliced = blob.clone();
        spliced[h + full..h + 2 * full].copy_from_slice(&other[h + full..h + 2 * full]);
        assert!(open_all(&k, b"ctx", &spliced).is_err());
        // Another context (another blob id or patient), another key.
        assert!(open_all(&k, b"other", &blob).is_err());
        assert!(open_all(&DataKey::generate().unwrap(), b"ctx", &blob).is_err());
        // And the untouched blob still opens.
        assert_eq!(open_all(&k, b"ctx", &blob).unwrap(), d);
    }

    #[test]
    fn sealer_refuses_misuse_and_hides_plaintext() {
        let k = DataKey::generate().unwrap();
        let (mut s, _) = k.stream_sealer(b"ctx").unwrap();
        assert!(s.seal(&[1; 10], false).is_err(), "a short segment must be the last");
        let last = s.seal(b"Budi Santoso 3171234567890123", true).unwrap();
        assert!(!last.windows(12).any(|w| w == b"Budi Santoso"));
        assert!(s.seal(b"more", true).is_err(), "nothing after the last segment");
        assert!(k.stream_opener(b"ctx", b"BKS2xxxxxxxxxxx").is_err());
    }
}
