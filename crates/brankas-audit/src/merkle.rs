//! RFC 6962 / RFC 9162 Merkle tree hashing: leaf and node hashes, tree heads, inclusion and
//! consistency proofs and their verification, and the compact "frontier" that lets an
//! appender compute each new tree head from the old one in O(log n).
//!
//! Proofs are computed over a [`HashSource`] that answers the hash of any complete, aligned
//! subtree; the audit log answers from stored leaf hashes and stored subtree hashes at a
//! few levels (see [`STORED_LEVELS`]), so a proof over millions of records reads a few
//! hundred hashes, not the whole log.

use aws_lc_rs::digest;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Levels (log2 of the subtree size) whose complete subtree hashes the log stores as it
/// grows. Level 0 are the leaves themselves.
pub const STORED_LEVELS: [u8; 2] = [8, 16];

/// The hash of an empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    sha(&[&[]])
}

/// `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    sha(&[&[0u8], data])
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha(&[&[1u8], left, right])
}

fn sha(parts: &[&[u8]]) -> Hash {
    let mut c = digest::Context::new(&digest::SHA256);
    for p in parts {
        c.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// Largest power of two strictly smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// Answers hashes of complete subtrees `[start, start + 2^level)` with `start` a multiple of
/// `2^level`, within the tree it describes.
pub trait HashSource {
    type Error;
    fn subtree(&mut self, level: u8, start: u64) -> Result<Hash, Self::Error>;
}

/// Leaf hashes in memory.
impl HashSource for &[Hash] {
    type Error = std::convert::Infallible;
    fn subtree(&mut self, level: u8, start: u64) -> Result<Hash, Self::Error> {
        Ok(mth_slice(&self[start as usize..(start + (1u64 << level)) as usize]))
    }
}

fn mth_slice(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&mth_slice(&leaves[..k]), &mth_slice(&leaves[k..]))
        }
    }
}

/// `MTH(D[start : start + n])`, decomposed into complete aligned subtrees.
pub fn subtree_root<S: HashSource>(src: &mut S, start: u64, n: u64) -> Result<Hash, S::Error> {
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() {
        return src.subtree(n.trailing_zeros() as u8, start);
    }
    let k = split(n);
    let l = subtree_root(src, start, k)?;
    let r = subtree_root(src, start + k, n - k)?;
    Ok(node_hash(&l, &r))
}

/// The tree head of the first `n` leaves.
pub fn root<S: HashSource>(src: &mut S, n: u64) -> Result<Hash, S::Error> {
    subtree_root(src, 0, n)
}

/// The inclusion proof (audit path) of leaf `index` in the tree of the first `n` leaves.
pub fn inclusion_proof<S: HashSource>(src: &mut S, index: u64, n: u64) -> Result<Vec<Hash>, S::Error> {
    assert!(index < n, "leaf index beyond the tree");
    let mut out = Vec::new();
    path(src, index, 0, n, &mut out)?;
    Ok(out)
}

fn path<S: HashSource>(src: &mut S, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) -> Result<(), S::Error> {
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(src, m, start, k, out)?;
        out.push(subtree_root(src, start + k, n - k)?);
    } else {
        path(src, m - k, start + k, n - k, out)?;
        out.push(subtree_root(src, start, k)?);
    }
    Ok(())
}

/// The consistency proof between the trees of the first `m` and the first `n` leaves
/// (0 < m ≤ n), per RFC 6962 section 2.1.2.
pub fn consistency_proof<S: HashSource>(src: &mut S, m: u64, n: u64) -> Result<Vec<Hash>, S::Error> {
    assert!(m > 0 && m <= n, "consistency proof needs 0 < m <= n");
    let mut out = Vec::new();
    subproof(src, m, 0, n, true, &mut out)?;
    Ok(out)
}

fn subproof<S: HashSource>(src: &mut S, m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<Hash>) -> Result<(), S::Error> {
    if m == n {
        if !complete {
            out.push(subtree_root(src, start, n)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, start, k, complete, out)?;
        out.push(subtree_root(src, start + k, n - k)?);
    } else {
        subproof(src, m - k, start + k, n - k, false, out)?;
        out.push(subtree_root(src, start, k)?);
    }
    Ok(())
}

/// Verifies an inclusion proof (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, n: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= n {
        return false;
    }
    let (mut fnode, mut snode) = (index, n - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Verifies a consistency proof between two tree heads (RFC 9162 section 2.1.4.2).
pub fn verify_consistency(m: u64, n: u64, proof: &[Hash], old_root: &Hash, new_root: &Hash) -> bool {
    if m == 0 || m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && old_root == new_root;
    }
    let mut proof: Vec<Hash> = proof.to_vec();
    if m.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else { return false };
    let (mut fnode, mut snode) = (m - 1, n - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *old_root && sr == *new_root
}

/// The right edge of a tree: the roots of its complete subtrees, largest first (one per set
/// bit of the size). Appending a leaf and computing the head are O(log n).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)`, levels strictly decreasing.
    nodes: Vec<(u8, Hash)>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; returns the complete subtrees this append finished, as
    /// `(level, index of the subtree at that level, hash)`, the leaf itself included at level 0.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u8, u64, Hash)> {
        let mut done = vec![(0u8, self.size, leaf)];
        let mut cur = (0u8, leaf);
        while let Some(&(level, h)) = self.nodes.last() {
            if level != cur.0 {
                break;
            }
            self.nodes.pop();
            cur = (level + 1, node_hash(&h, &cur.1));
            let index = (self.size + 1) / (1u64 << cur.0) - 1;
            done.push((cur.0, index, cur.1));
        }
        self.nodes.push(cur);
        self.size += 1;
        done
    }

    /// The tree head.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else { return empty_root() };
        for (_, h) in it {
            acc = node_hash(h, &acc);
        }
        acc
    }

    /// The frontier of the first `size` leaves, from the subtrees `src` answers (one per set
    /// bit of `size`): how a log whose older records were archived resumes from its stored
    /// subtree hashes.
    pub fn at<S: HashSource>(src: &mut S, size: u64) -> Result<Frontier, S::Error> {
        let mut nodes = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size >> level & 1 == 1 {
                nodes.push((level, src.subtree(level, start)?));
                start += 1u64 << level;
            }
        }
        Ok(Frontier { size, nodes })
    }

    /// Stable encoding: size (8 bytes, big endian), then per node its level and hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.size.to_be_bytes().to_vec();
        for (l, h) in &self.nodes {
            out.push(*l);
            out.extend_from_slice(h);
        }
        out
    }

    /// Decodes [`Frontier::encode`]; `None` when the bytes do not describe a frontier.
    pub fn decode(b: &[u8]) -> Option<Frontier> {
        let (size, rest) = b.split_first_chunk::<8>()?;
        let size = u64::from_be_bytes(*size);
        if rest.len() % 33 != 0 {
            return None;
        }
        let nodes: Vec<(u8, Hash)> = rest.chunks(33).map(|c| (c[0], c[1..].try_into().expect("33-byte chunk"))).collect();
        let expected: Vec<u8> = (0..64u8).rev().filter(|l| size >> l & 1 == 1).collect();
        if nodes.iter().map(|n| n.0).collect::<Vec<_>>() != expected {
            return None;
        }
        Some(Frontier { size, nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hd(s: &str) -> Hash {
        let v: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
        v.try_into().unwrap()
    }

    /// The certificate-transparency reference vectors (RFC 6962 test data).
    fn leaves() -> Vec<Hash> {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        data.iter().map(|d| leaf_hash(d)).collect()
    }

    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn roots_match_reference_vectors() {
        assert_eq!(empty_root(), hd("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
        let l = leaves();
        let mut f = Frontier::default();
        for n in 1..=8u64 {
            assert_eq!(root(&mut &l[..], n).unwrap(), hd(ROOTS[n as usize - 1]), "size {n}");
            f.push(l[n as usize - 1]);
            assert_eq!(f.root(), hd(ROOTS[n as usize - 1]), "frontier at size {n}");
        }
    }

    #[test]
    fn proofs_match_reference_vectors() {
        let l = leaves();
        let s = &mut &l[..];
        assert_eq!(
            inclusion_proof(s, 0, 8).unwrap(),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
            ]
            .map(hd)
        );
        assert_eq!(
            inclusion_proof(s, 5, 8).unwrap(),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
            ]
            .map(hd)
        );
        assert!(inclusion_proof(s, 0, 1).unwrap().is_empty());
        assert_eq!(
            consistency_proof(s, 1, 8).unwrap(),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
            ]
            .map(hd)
        );
        assert_eq!(
            consistency_proof(s, 6, 8).unwrap(),
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
            ]
            .map(hd)
        );
        assert_eq!(
            consistency_proof(s, 2, 5).unwrap(),
            ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e", "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"].map(hd)
        );
        assert!(consistency_proof(s, 1, 1).unwrap().is_empty());
    }

    #[test]
    fn every_proof_verifies_and_tampering_fails() {
        let l: Vec<Hash> = (0..70u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let s = &mut &l[..];
        for n in 1..=70u64 {
            let r = root(s, n).unwrap();
            for i in 0..n {
                let p = inclusion_proof(s, i, n).unwrap();
                assert!(verify_inclusion(&l[i as usize], i, n, &p, &r), "inclusion {i} in {n}");
                assert!(!verify_inclusion(&l[(i as usize + 1) % 70], i, n, &p, &r));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(&l[i as usize], i, n, &bad, &r));
                }
            }
            for m in 1..=n {
                let p = consistency_proof(s, m, n).unwrap();
                let old = root(s, m).unwrap();
                assert!(verify_consistency(m, n, &p, &old, &r), "consistency {m} -> {n}");
                if m < n {
                    assert!(!verify_consistency(m, n, &p, &r, &r), "wrong old root {m} -> {n}");
                }
            }
        }
    }

    #[test]
    fn frontier_reports_completed_subtrees_and_round_trips() {
        let l: Vec<Hash> = (0..600u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::default();
        let mut level8 = Vec::new();
        for (i, h) in l.iter().enumerate() {
            for (level, index, hash) in f.push(*h) {
                if level == 8 {
                    level8.push((index, hash));
                }
                assert_eq!(hash, (&l[..]).subtree(level, index << level).unwrap());
            }
            assert_eq!(Frontier::decode(&f.encode()).as_ref(), Some(&f));
            if i % 97 == 0 {
                assert_eq!(f.root(), root(&mut &l[..], i as u64 + 1).unwrap());
            }
        }
        assert_eq!(level8.len(), 2);
        for n in [0u64, 1, 256, 299, 512, 600] {
            let mut g = Frontier::default();
            l[..n as usize].iter().for_each(|h| drop(g.push(*h)));
            assert_eq!(Frontier::at(&mut &l[..], n).unwrap(), g, "frontier at {n}");
        }
        assert!(Frontier::decode(&[0, 0, 0, 0, 0, 0, 0, 3, 0]).is_none());
    }
}
