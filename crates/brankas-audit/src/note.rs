//! Signed checkpoints in the C2SP `tlog-checkpoint` format, as a C2SP signed note:
//!
//! ```text
//! <origin>
//! <tree size, decimal>
//! <tree head, base64>
//!
//! — <origin> <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>
//! ```
//!
//! The signature covers the three body lines with their newlines. The key hash is the first
//! four bytes of `SHA-256(origin || "\n" || 0x01 || public key)` (0x01: Ed25519), so a verifier
//! holding several keys picks the right one. Checkpoints are signed by the vault's audit key
//! ([`brankas_vault::AuditSigner`]); verifying needs only the public key.

use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::merkle::Hash;

/// A tree size and head, named by its log's origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Why a signed note was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NoteError {
    #[error("not a signed checkpoint note")]
    Malformed,
    #[error("the checkpoint is for another log (origin differs)")]
    WrongOrigin,
    #[error("no valid signature by the audit key")]
    BadSignature,
}

impl Checkpoint {
    /// The signed body: origin, size and head, each line ending in a newline.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// The note with its signature line; `sign` signs bytes with the Ed25519 key whose public
    /// half is `public_key`.
    pub fn sign(&self, public_key: &[u8; 32], sign: impl FnOnce(&[u8]) -> [u8; 64]) -> String {
        self.sign_extended(&[], public_key, sign)
    }

    /// Parses a signed note and checks that `public_key` signed it (and, if given, that it is
    /// for `origin`). Lines signed by other keys are ignored, as C2SP notes allow, and so are
    /// extension lines after the tree head (see [`Checkpoint::verify_extended`]).
    pub fn verify(note: &str, origin: Option<&str>, public_key: &[u8; 32]) -> Result<Checkpoint, NoteError> {
        Self::verify_extended(note, origin, public_key).map(|(c, _)| c)
    }

    /// [`Checkpoint::verify`], also returning the checkpoint's extension lines (C2SP
    /// `tlog-checkpoint` allows lines after the tree head; they are covered by the signature).
    pub fn verify_extended(note: &str, origin: Option<&str>, public_key: &[u8; 32]) -> Result<(Checkpoint, Vec<String>), NoteError> {
        let (body, sigs) = note.split_once("\n\n").ok_or(NoteError::Malformed)?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let (Some(o), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(NoteError::Malformed);
        };
        let extensions: Vec<String> = lines.map(String::from).collect();
        if extensions.iter().any(|l| l.is_empty()) {
            return Err(NoteError::Malformed);
        }
        if o.is_empty() || size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) || (size.len() > 1 && size.starts_with('0')) {
            return Err(NoteError::Malformed);
        }
        let size: u64 = size.parse().map_err(|_| NoteError::Malformed)?;
        let root: Hash = B64.decode(root).ok().and_then(|r| r.try_into().ok()).ok_or(NoteError::Malformed)?;
        if origin.is_some_and(|want| want != o) {
            return Err(NoteError::WrongOrigin);
        }
        let want = key_hash(o, public_key);
        let key = UnparsedPublicKey::new(&ED25519, public_key);
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else { return Err(NoteError::Malformed) };
            let Some((name, blob)) = rest.split_once(' ') else { return Err(NoteError::Malformed) };
            let Ok(blob) = B64.decode(blob) else { return Err(NoteError::Malformed) };
            if name == o && blob.len() == 68 && blob[..4] == want && key.verify(body.as_bytes(), &blob[4..]).is_ok() {
                return Ok((Checkpoint { origin: o.to_string(), size, root }, extensions));
            }
        }
        Err(NoteError::BadSignature)
    }

    /// The note of this checkpoint with extension lines (each non-empty, without newlines).
    pub fn sign_extended(&self, extensions: &[String], public_key: &[u8; 32], sign: impl FnOnce(&[u8]) -> [u8; 64]) -> String {
        let mut body = self.body();
        for e in extensions {
            body.push_str(e);
            body.push('\n');
        }
        let sig = sign(body.as_bytes());
        let mut blob = key_hash(&self.origin, public_key).to_vec();
        blob.extend_from_slice(&sig);
        format!("{body}\n\u{2014} {} {}\n", self.origin, B64.encode(blob))
    }
}

/// The C2SP key hash of an Ed25519 key.
pub fn key_hash(origin: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut c = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    c.update(origin.as_bytes());
    c.update(b"\n\x01");
    c.update(public_key);
    let d = c.finish();
    d.as_ref()[..4].try_into().expect("4 bytes")
}

/// The verifier key string of the `note` format (`<name>+<key hash hex>+<base64(0x01 || key)>`),
/// for publishing next to checkpoints.
pub fn verifier_key(origin: &str, public_key: &[u8; 32]) -> String {
    let mut k = vec![1u8];
    k.extend_from_slice(public_key);
    let h = key_hash(origin, public_key);
    format!("{origin}+{:02x}{:02x}{:02x}{:02x}+{}", h[0], h[1], h[2], h[3], B64.encode(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};

    fn keypair(seed: u8) -> (Ed25519KeyPair, [u8; 32]) {
        let kp = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        (kp, pk)
    }

    #[test]
    fn signs_and_verifies_and_refuses_changes() {
        let (kp, pk) = keypair(7);
        let c = Checkpoint { origin: "brankas.example/audit".into(), size: 45, root: [9; 32] };
        let note = c.sign(&pk, |m| kp.sign(m).as_ref().try_into().unwrap());
        assert!(note.starts_with("brankas.example/audit\n45\n"));
        assert!(note.contains("\n\n\u{2014} brankas.example/audit "));
        assert!(note.ends_with('\n'));
        assert_eq!(Checkpoint::verify(&note, Some("brankas.example/audit"), &pk), Ok(c.clone()));
        assert_eq!(Checkpoint::verify(&note, None, &pk), Ok(c.clone()));
        assert_eq!(Checkpoint::verify(&note.replacen("45", "46", 1), None, &pk), Err(NoteError::BadSignature));
        assert_eq!(Checkpoint::verify(&note, Some("other"), &pk), Err(NoteError::WrongOrigin));
        let (_, other) = keypair(8);
        assert_eq!(Checkpoint::verify(&note, None, &other), Err(NoteError::BadSignature));
        assert_eq!(Checkpoint::verify("garbage", None, &pk), Err(NoteError::Malformed));
        assert_eq!(Checkpoint::verify("o\n012\nAAAA\n\n", None, &pk), Err(NoteError::Malformed));
        assert!(verifier_key("brankas.example/audit", &pk).starts_with("brankas.example/audit+"));
        // Extension lines are signed with the rest and returned; editing one breaks the signature.
        let ext = vec!["brankas-anchor 1".to_string(), "versions 12".to_string()];
        let note = c.sign_extended(&ext, &pk, |m| kp.sign(m).as_ref().try_into().unwrap());
        assert_eq!(Checkpoint::verify_extended(&note, None, &pk), Ok((c.clone(), ext)));
        assert_eq!(Checkpoint::verify(&note, None, &pk), Ok(c.clone()));
        assert_eq!(Checkpoint::verify(&note.replace("versions 12", "versions 13"), None, &pk), Err(NoteError::BadSignature));
    }
}
