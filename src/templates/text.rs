//! A template's text: literal runs and `#name#` placeholders, as the
//! reference writes them (`Congrats #name#, you won #money#`). Parsed once,
//! when a template is saved or loaded; rendered per push in one pass, so a
//! value is inserted as it is and never scanned for placeholders itself.
//! Pure: no I/O, no clock.
//!
//! The grammar, decided here because the reference only shows examples:
//! - `#` + a name + `#` is a placeholder. A name is 1 to
//!   [`MAX_PLACEHOLDER_CHARS`] characters, each a Unicode letter or digit or
//!   `_` (the same characters as a template name), compared exactly.
//! - `##` is one literal `#` (a URL fragment in a `uri` is `##frag`).
//! - Any other `#` is an error: one with no closing `#`, or one followed by a
//!   character a name cannot hold (`# `, `#-`). The error gives the byte
//!   offset, so a caller can find it.

use std::fmt;

/// Longest placeholder name, in characters.
pub const MAX_PLACEHOLDER_CHARS: usize = 64;

/// A parsed template text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    /// Text as it renders (a `##` already turned into `#`).
    Literal(String),
    Placeholder(String),
}

/// Why a text is not a valid template text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("the '#' at byte {offset} has no closing '#' (write ## for a literal #)")]
    Unclosed { offset: usize },
    #[error(
        "the '#' at byte {offset} is followed by {found:?}, which a placeholder name cannot hold (letters, digits and _ only; write ## for a literal #)"
    )]
    BadName { offset: usize, found: char },
    #[error("the placeholder at byte {offset} has a name over {MAX_PLACEHOLDER_CHARS} characters")]
    NameTooLong { offset: usize },
}

/// Whether `c` may appear in a placeholder name (and in a template name).
pub fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

impl Text {
    pub fn parse(source: &str) -> Result<Text, TextError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(at) = rest.find('#') {
            literal.push_str(&rest[..at]);
            let hash = offset + at;
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('#') {
                literal.push('#');
                offset = hash + 2;
                rest = tail;
                continue;
            }
            let Some(close) = after.find(|c: char| !is_name_char(c)) else {
                return Err(TextError::Unclosed { offset: hash });
            };
            let found = after[close..]
                .chars()
                .next()
                .expect("find returned a char boundary");
            if found != '#' {
                return Err(TextError::BadName { offset: hash, found });
            }
            let name = &after[..close];
            if name.chars().count() > MAX_PLACEHOLDER_CHARS {
                return Err(TextError::NameTooLong { offset: hash });
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Placeholder(name.to_owned()));
            offset = hash + 1 + close + 1;
            rest = &after[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Text { parts })
    }

    /// The text with no placeholders and `#` written as `##`: what `parse`
    /// turns back into `literal`.
    pub fn escape(literal: &str) -> String {
        literal.replace('#', "##")
    }

    /// Placeholder names in order of appearance, repeats included.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Placeholder(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The text with every placeholder replaced by `value(name)`, or the
    /// first name that has no value.
    pub fn render<'v>(&self, mut value: impl FnMut(&str) -> Option<&'v str>) -> Result<String, &str> {
        let mut out = String::with_capacity(self.rendered_len_hint());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Placeholder(name) => out.push_str(value(name).ok_or(name.as_str())?),
            }
        }
        Ok(out)
    }

    fn rendered_len_hint(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(text) => text.len(),
                Part::Placeholder(_) => 8,
            })
            .sum()
    }
}

/// The source form: `#` as `##`, placeholders as `#name#`.
impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Literal(text) => f.write_str(&Text::escape(text))?,
                Part::Placeholder(name) => write!(f, "#{name}#")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn names(source: &str) -> Vec<String> {
        Text::parse(source)
            .unwrap()
            .placeholders()
            .map(str::to_owned)
            .collect()
    }

    fn render(source: &str, values: &[(&str, &str)]) -> Result<String, String> {
        let values: HashMap<&str, &str> = values.iter().copied().collect();
        Text::parse(source)
            .unwrap()
            .render(|n| values.get(n).copied())
            .map_err(str::to_owned)
    }

    #[test]
    fn the_reference_example() {
        let source = "恭喜#name#中了#money#元";
        assert_eq!(names(source), ["name", "money"]);
        assert_eq!(
            render(source, &[("name", "张三"), ("money", "200")]).unwrap(),
            "恭喜张三中了200元"
        );
    }

    #[test]
    fn doubled_hashes_are_literal() {
        assert_eq!(render("a##b", &[]).unwrap(), "a#b");
        assert_eq!(render("####", &[]).unwrap(), "##");
        assert_eq!(
            render("https://x/y##top?q=#q#", &[("q", "1")]).unwrap(),
            "https://x/y#top?q=1"
        );
        assert_eq!(render("#a####b#", &[("a", "1"), ("b", "2")]).unwrap(), "1#2");
        assert_eq!(names("#a##b#"), ["a", "b"], "adjacent placeholders");
    }

    #[test]
    fn placeholder_names_hold_letters_digits_and_underscores() {
        assert_eq!(names("#用户_1#"), ["用户_1"]);
        assert_eq!(names("#x##x#"), ["x", "x"]);
        let long = "n".repeat(MAX_PLACEHOLDER_CHARS);
        assert_eq!(names(&format!("#{long}#")), std::slice::from_ref(&long));
        assert_eq!(
            Text::parse(&format!("ab#{long}n#")),
            Err(TextError::NameTooLong { offset: 2 })
        );
    }

    #[test]
    fn stray_hashes_are_errors_with_their_offset() {
        assert_eq!(Text::parse("#"), Err(TextError::Unclosed { offset: 0 }));
        assert_eq!(Text::parse("ab#cd"), Err(TextError::Unclosed { offset: 2 }));
        assert_eq!(Text::parse("a##b#"), Err(TextError::Unclosed { offset: 4 }));
        assert_eq!(
            Text::parse("é# x#"),
            Err(TextError::BadName {
                offset: 2,
                found: ' '
            })
        );
        assert_eq!(
            Text::parse("#a-b#"),
            Err(TextError::BadName {
                offset: 0,
                found: '-'
            })
        );
        let message = Text::parse("50# off").unwrap_err().to_string();
        assert!(message.contains("byte 2") && message.contains("##"), "{message}");
    }

    #[test]
    fn a_missing_value_names_the_placeholder_and_values_are_not_rescanned() {
        assert_eq!(render("#a# #b#", &[("a", "1")]), Err("b".to_string()));
        assert_eq!(render("#a#", &[("a", "#b#")]).unwrap(), "#b#");
        assert_eq!(render("#a#", &[("a", "")]).unwrap(), "");
    }

    #[test]
    fn display_gives_back_an_equivalent_source() {
        for source in ["", "plain", "a##b#c#d", "#x##y#", "#1#2"] {
            let Ok(text) = Text::parse(source) else {
                continue;
            };
            assert_eq!(Text::parse(&text.to_string()).unwrap(), text, "{source}");
        }
    }

    /// A literal run with no `#`, a placeholder name, and a value with no `#`.
    fn literal() -> impl Strategy<Value = String> {
        "[^#]{0,12}"
    }
    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_\u{4e00}-\u{4e20}]{1,8}"
    }

    proptest! {
        /// render(template, values) contains every value and leaves no
        /// `#name#` (nor any `#`) behind.
        #[test]
        fn rendering_fills_every_placeholder(
            parts in prop::collection::vec((literal(), name()), 0..8),
            tail in literal(),
            values in prop::collection::vec(literal(), 8),
        ) {
            let source: String = parts.iter().map(|(l, n)| format!("{l}#{n}#")).collect::<String>() + &tail;
            let text = Text::parse(&source).unwrap();
            let distinct: Vec<&String> = {
                let mut seen = Vec::new();
                for (_, n) in &parts {
                    if !seen.contains(&n) {
                        seen.push(n);
                    }
                }
                seen
            };
            let map: HashMap<&str, &str> = distinct
                .iter()
                .zip(values.iter().cycle())
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let rendered = text.render(|n| map.get(n).copied()).unwrap();
            for value in map.values() {
                prop_assert!(rendered.contains(value), "{rendered:?} lacks {value:?}");
            }
            prop_assert!(!rendered.contains('#'), "{rendered:?}");
            let expected: String = parts.iter().map(|(l, n)| format!("{l}{}", map[n.as_str()])).collect::<String>() + &tail;
            prop_assert_eq!(rendered, expected);
        }

        /// Any literal survives escape, parse and render unchanged.
        #[test]
        fn escaped_literals_round_trip(literal in any::<String>()) {
            let text = Text::parse(&Text::escape(&literal)).unwrap();
            prop_assert_eq!(text.placeholders().count(), 0);
            prop_assert_eq!(text.render(|_| None).unwrap(), literal);
        }

        /// Parsing never panics, and what parses prints back to itself.
        #[test]
        fn parse_is_total(source in "[#a_ 1é-]{0,24}") {
            if let Ok(text) = Text::parse(&source) {
                prop_assert_eq!(Text::parse(&text.to_string()).unwrap(), text);
            }
        }
    }
}
