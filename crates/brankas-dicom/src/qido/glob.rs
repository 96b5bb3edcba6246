//! Wildcard matching (PS3.4 C.2.2.2.4).

/// Whether `text` matches `pattern`, where `*` matches any run of characters
/// (the empty one included) and `?` exactly one character; every other
/// character matches itself. Case-sensitive, on Unicode scalar values.
///
/// The classic greedy two-pointer algorithm: on a mismatch it only returns
/// to the most recent `*`, never to earlier ones, so there is no
/// exponential backtracking. The worst case is O(|pattern| × |text|), and
/// patterns like `*a*a*a*b` against `aaaa…` run in linear time.
///
/// ```
/// use brankas_dicom::qido::glob_match;
/// assert!(glob_match("Doe*", "Doe^John"));
/// assert!(glob_match("D?e^*", "Doe^John"));
/// assert!(!glob_match("Doe", "Doe^John"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    glob_chars(&pattern, &text)
}

pub(crate) fn glob_chars(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    // The position of the last `*` seen, and where in `text` its match
    // currently ends.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last `*` swallow one more character.
                Some((s, end)) => {
                    star = Some((s, end + 1));
                    p = s + 1;
                    t = end + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn basics() {
        assert!(glob_match("", ""));
        assert!(!glob_match("", "a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("?", "é"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("a*c", "abbbc"));
        assert!(glob_match("a*c", "ac"));
        assert!(!glob_match("a*c", "acb"));
        assert!(glob_match("*c", "acbc"));
        assert!(glob_match("a**?", "ab"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*^John", "Doe^John"));
        assert!(glob_match("*b*", "abc"));
    }
}
