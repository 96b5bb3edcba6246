//! Case- and accent-insensitive string comparison for `string` search
//! parameters (FHIR R4 §3.1.1.4.8).
//!
//! FHIR asks for "case-insensitive and accent-insensitive" matching. Full
//! Unicode normalisation would need a large table crate; instead we fold the
//! characters that actually occur in names and addresses (ASCII, Latin-1,
//! Latin Extended-A, and combining diacritical marks, which are dropped so
//! decomposed input folds like precomposed input) and lower-case the rest with
//! the standard library. Folding is done lazily through an iterator so that
//! matching a resource never allocates.

use std::str::Chars;

/// Folds one character: `Some(base)` for a letter with a diacritic (or a
/// ligature), `None` when [`char::to_lowercase`] is the answer.
fn fold_table(c: char) -> Option<&'static str> {
    let s = match c as u32 {
        0xC0..=0xC5 | 0xE0..=0xE5 => "a",
        0xC6 | 0xE6 => "ae",
        0xC7 | 0xE7 => "c",
        0xC8..=0xCB | 0xE8..=0xEB => "e",
        0xCC..=0xCF | 0xEC..=0xEF => "i",
        0xD0 | 0xF0 => "d",
        0xD1 | 0xF1 => "n",
        0xD2..=0xD6 | 0xD8 | 0xF2..=0xF6 | 0xF8 => "o",
        0xD9..=0xDC | 0xF9..=0xFC => "u",
        0xDD | 0xFD | 0xFF => "y",
        0xDE | 0xFE => "th",
        0xDF => "ss",
        0x100..=0x105 => "a",
        0x106..=0x10D => "c",
        0x10E..=0x111 => "d",
        0x112..=0x11B => "e",
        0x11C..=0x123 => "g",
        0x124..=0x127 => "h",
        0x128..=0x131 => "i",
        0x132..=0x133 => "ij",
        0x134..=0x135 => "j",
        0x136..=0x138 => "k",
        0x139..=0x142 => "l",
        0x143..=0x14B => "n",
        0x14C..=0x151 => "o",
        0x152..=0x153 => "oe",
        0x154..=0x159 => "r",
        0x15A..=0x161 | 0x17F => "s",
        0x162..=0x167 => "t",
        0x168..=0x173 => "u",
        0x174..=0x175 => "w",
        0x176..=0x178 => "y",
        0x179..=0x17E => "z",
        _ => return None,
    };
    Some(s)
}

/// Combining diacritical marks (U+0300..U+036F) carry only accents.
fn is_combining_mark(c: char) -> bool {
    ('\u{300}'..='\u{36F}').contains(&c)
}

enum Pending {
    None,
    Table(Chars<'static>),
    Lower(std::char::ToLowercase),
}

/// Iterator over the folded characters of a string.
pub(crate) struct Fold<'a> {
    chars: Chars<'a>,
    pending: Pending,
}

impl Iterator for Fold<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        loop {
            match &mut self.pending {
                Pending::Table(it) => {
                    if let Some(c) = it.next() {
                        return Some(c);
                    }
                }
                Pending::Lower(it) => {
                    if let Some(c) = it.next() {
                        return Some(c);
                    }
                }
                Pending::None => {}
            }
            self.pending = Pending::None;
            let c = self.chars.next()?;
            if c.is_ascii() {
                return Some(c.to_ascii_lowercase());
            }
            if is_combining_mark(c) {
                continue;
            }
            self.pending = match fold_table(c) {
                Some(s) => Pending::Table(s.chars()),
                None => Pending::Lower(c.to_lowercase()),
            };
        }
    }
}

/// Folds `s` lazily.
pub(crate) fn fold(s: &str) -> Fold<'_> {
    Fold { chars: s.chars(), pending: Pending::None }
}

/// Folds `s` into a new string (done once per query value, never per resource).
pub(crate) fn fold_string(s: &str) -> String {
    fold(s).collect()
}

/// Does the folded form of `target` start with `folded_query` (already folded)?
pub(crate) fn folded_starts_with(target: &str, folded_query: &str) -> bool {
    if target.is_ascii() && folded_query.is_ascii() {
        // Fast path for the overwhelmingly common case: no iterator state.
        let (t, q) = (target.as_bytes(), folded_query.as_bytes());
        return t.len() >= q.len() && t[..q.len()].eq_ignore_ascii_case(q);
    }
    let mut t = fold(target);
    folded_query.chars().all(|qc| t.next() == Some(qc))
}

/// Does the folded form of `target` contain `folded_query` (already folded)?
pub(crate) fn folded_contains(target: &str, folded_query: &str) -> bool {
    if folded_query.is_empty() {
        return true;
    }
    if target.is_ascii() && folded_query.is_ascii() {
        let q = folded_query.as_bytes();
        return target.as_bytes().windows(q.len()).any(|w| w.eq_ignore_ascii_case(q));
    }
    // Quadratic but allocation-free; strings in resources are short.
    target.char_indices().any(|(i, _)| folded_starts_with(&target[i..], folded_query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_accents() {
        assert_eq!(fold_string("José ÁLVAREZ"), "jose alvarez");
        assert_eq!(fold_string("Straße"), "strasse");
        assert_eq!(fold_string("Łódź"), "lodz");
        // Decomposed e + combining acute folds like the precomposed form.
        assert_eq!(fold_string("Jose\u{301}"), "jose");
        assert_eq!(fold_string("ΑΒΓ"), "αβγ");
    }

    #[test]
    fn prefix_and_contains() {
        assert!(folded_starts_with("Peter", "pet"));
        assert!(!folded_starts_with("Pe", "pet"));
        assert!(folded_starts_with("Müller", "mul"));
        assert!(folded_starts_with("MÜLLER", &fold_string("Mül")));
        assert!(folded_contains("Hernández", "nand"));
        assert!(folded_contains("abc", ""));
        assert!(!folded_contains("abc", "abd"));
        assert!(folded_contains("Señor Núñez", "nun"));
    }
}
