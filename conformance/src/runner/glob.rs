//! `--filter` patterns: `*` matches any run of characters (dots included),
//! `?` one character. A pattern without either matches an id exactly or as
//! a dotted prefix (`auth` selects `auth.*`, `close.lingering` selects
//! `close.lingering.*`).

/// Whether `id` matches `pattern`.
pub fn matches(pattern: &str, id: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return id == pattern || id.strip_prefix(pattern).is_some_and(|r| r.starts_with('.'));
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = id.chars().collect();
    // Iterative wildcard match with backtracking to the last `*`.
    let (mut i, mut j) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < p.len() && (p[i] == '?' || p[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_and_prefixes() {
        assert!(matches("auth", "auth.deadline"));
        assert!(!matches("auth", "authx.deadline"));
        assert!(matches("auth.deadline", "auth.deadline"));
        assert!(matches("*.deadline*", "auth.deadline-4001"));
        assert!(matches("vector.request-?d-*", "vector.request-id-0"));
        assert!(!matches("close.*", "auth.x"));
        assert!(matches("*", "anything.at.all"));
    }
}
