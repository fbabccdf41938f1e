//! Topics and subscription patterns.
//!
//! A topic is one or more non-empty tokens separated by `.`, e.g.
//! `chat.room1`. A pattern may also use `*` as a whole token (exactly one
//! token) and `>` as the whole last token (one or more tokens), as in NATS.
//! Tokens may hold any Unicode characters except `.`, `*`, `>`, whitespace
//! and control characters.
//!
//! ```
//! use plexus_protocol::topic::{Pattern, Topic};
//! let p = Pattern::parse("chat.*.msgs", 256).unwrap();
//! assert!(p.matches(&Topic::parse("chat.room1.msgs", 256).unwrap()));
//! assert!(!p.matches(&Topic::parse("chat.room1.typing", 256).unwrap()));
//! assert!(Pattern::parse("chat.>", 256).unwrap().matches_str("chat.a.b"));
//! assert!(Topic::parse("chat.*", 256).is_err());
//! ```

use std::fmt;

/// Absolute ceiling on topic length in bytes; servers may announce less in
/// [`ServerLimits::max_topic_len`](crate::methods::ServerLimits).
pub const MAX_TOPIC_LEN: usize = 1024;

/// Why a topic or pattern is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Empty string.
    #[error("empty topic")]
    Empty,
    /// Longer than the limit.
    #[error("topic longer than {max} bytes")]
    TooLong {
        /// The limit in bytes.
        max: usize,
    },
    /// An empty token (leading, trailing or doubled `.`).
    #[error("empty token in topic")]
    EmptyToken,
    /// A character that is not allowed in a token.
    #[error("invalid character in topic")]
    InvalidChar,
    /// A wildcard in a topic, or a wildcard that is not a whole token, or
    /// `>` that is not the last token.
    #[error("misplaced wildcard")]
    Wildcard,
}

fn check(s: &str, max_len: usize, wildcards: bool) -> Result<(), TopicError> {
    let max = max_len.min(MAX_TOPIC_LEN);
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > max {
        return Err(TopicError::TooLong { max });
    }
    let mut tokens = s.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(TopicError::EmptyToken);
        }
        match token {
            "*" if wildcards => continue,
            ">" if wildcards && tokens.peek().is_none() => continue,
            _ => {}
        }
        for c in token.chars() {
            if c == '*' || c == '>' {
                return Err(TopicError::Wildcard);
            }
            if c.is_whitespace() || c.is_control() {
                return Err(TopicError::InvalidChar);
            }
        }
    }
    Ok(())
}

/// A concrete topic (no wildcards), validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Box<str>);

impl Topic {
    /// Parses a topic of at most `max_len` bytes.
    pub fn parse(s: &str, max_len: usize) -> Result<Topic, TopicError> {
        check(s, max_len, false)?;
        Ok(Topic(s.into()))
    }

    /// The topic text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic's tokens.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A subscription pattern: a topic whose tokens may be `*`, or `>` last.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pattern(Box<str>);

impl Pattern {
    /// Parses a pattern of at most `max_len` bytes.
    pub fn parse(s: &str, max_len: usize) -> Result<Pattern, TopicError> {
        check(s, max_len, true)?;
        Ok(Pattern(s.into()))
    }

    /// The pattern text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The pattern's tokens.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// Whether the pattern has no wildcard (it names exactly one topic).
    pub fn is_exact(&self) -> bool {
        !self.tokens().any(|t| t == "*" || t == ">")
    }

    /// Whether the pattern matches a topic.
    pub fn matches(&self, topic: &Topic) -> bool {
        self.matches_str(topic.as_str())
    }

    /// Whether the pattern matches a topic given as text (assumed valid).
    pub fn matches_str(&self, topic: &str) -> bool {
        let mut t = topic.split('.');
        for p in self.tokens() {
            match p {
                ">" => return t.next().is_some(),
                "*" => {
                    if t.next().is_none() {
                        return false;
                    }
                }
                lit => {
                    if t.next() != Some(lit) {
                        return false;
                    }
                }
            }
        }
        t.next().is_none()
    }

    /// Whether every topic that `other` matches is also matched by `self`.
    ///
    /// Used to check a subscription against capability patterns: `chat.>`
    /// covers `chat.*` and `chat.room1`, but `chat.*` does not cover
    /// `chat.>`.
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut o = other.tokens();
        for p in self.tokens() {
            let Some(ot) = o.next() else { return false };
            match p {
                ">" => return true,
                "*" => {
                    if ot == ">" {
                        return false;
                    }
                }
                lit => {
                    if ot != lit {
                        return false;
                    }
                }
            }
        }
        o.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Topic> for Pattern {
    fn from(t: Topic) -> Pattern {
        Pattern(t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap()
    }

    #[test]
    fn validation() {
        assert_eq!(Topic::parse("", 10), Err(TopicError::Empty));
        assert_eq!(Topic::parse("a..b", 10), Err(TopicError::EmptyToken));
        assert_eq!(Topic::parse(".a", 10), Err(TopicError::EmptyToken));
        assert_eq!(Topic::parse("a.", 10), Err(TopicError::EmptyToken));
        assert_eq!(Topic::parse("a b", 10), Err(TopicError::InvalidChar));
        assert_eq!(Topic::parse("a.>", 10), Err(TopicError::Wildcard));
        assert_eq!(
            Topic::parse("abcdefghijk", 10),
            Err(TopicError::TooLong { max: 10 })
        );
        assert_eq!(Pattern::parse("a.>.b", 10), Err(TopicError::Wildcard));
        assert_eq!(Pattern::parse("a.b*", 10), Err(TopicError::Wildcard));
        assert!(Pattern::parse("*.>", 10).is_ok());
        assert!(Topic::parse("émoji.ü-1_x:y", 64).is_ok());
    }

    #[test]
    fn matching() {
        assert!(pat("a.b").matches_str("a.b"));
        assert!(!pat("a.b").matches_str("a.b.c"));
        assert!(!pat("a.b").matches_str("a"));
        assert!(pat("a.*").matches_str("a.b"));
        assert!(!pat("a.*").matches_str("a.b.c"));
        assert!(!pat("a.*").matches_str("a"));
        assert!(pat("a.>").matches_str("a.b.c"));
        assert!(!pat("a.>").matches_str("a"));
        assert!(pat(">").matches_str("x"));
        assert!(pat("*.b.>").matches_str("a.b.c.d"));
    }

    #[test]
    fn covering() {
        assert!(pat("chat.>").covers(&pat("chat.room1")));
        assert!(pat("chat.>").covers(&pat("chat.*")));
        assert!(pat("chat.>").covers(&pat("chat.>")));
        assert!(!pat("chat.>").covers(&pat("chat")));
        assert!(!pat("chat.*").covers(&pat("chat.>")));
        assert!(pat("chat.*").covers(&pat("chat.x")));
        assert!(!pat("chat.x").covers(&pat("chat.*")));
        assert!(pat(">").covers(&pat("a.b.>")));
        assert!(!pat("a.b").covers(&pat("a.b.c")));
    }
}
