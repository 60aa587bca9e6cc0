//! Reading a [`DegradeConfig`] from a rules file.
//!
//! Rules files are read with `serde` into types that keep each value's span, so that
//! an error points at the line of the value at fault. What the TOML parser itself
//! rejects (syntax, unknown keys, wrong types) comes with a span too; the rule it falls
//! in is then found in a second, untyped parse, which is done only on that error path.

use std::{ops::Range, path::Path};

use http::StatusCode;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    error::{duplicate, invalid, InRule, InvalidConfig},
    rules::{first_duplicate, Rule},
    DegradeConfig,
};

impl DegradeConfig {
    /// Reads rules and answers from TOML; see the [crate docs](crate#rules-files) for
    /// the format. Errors name the rule and the line at fault.
    pub fn from_toml_str(toml: &str) -> Result<Self, InvalidConfig> {
        from_toml_str(toml)
    }

    /// Reads rules and answers from a TOML file; see
    /// [`from_toml_str`](Self::from_toml_str).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, InvalidConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| invalid("file", format!("cannot read {}: {e}", path.display())))?;
        DegradeConfig::from_toml_str(&text)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    generic: Option<Spanned<String>>,
    status: Option<Spanned<i64>>,
    retry_after: Option<Spanned<i64>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    name: Option<Spanned<String>>,
    pattern: Option<Spanned<String>>,
    answer: Option<Spanned<String>>,
}

fn from_toml_str(source: &str) -> Result<DegradeConfig, InvalidConfig> {
    let line = |span: Range<usize>| Some(line_of(source, span.start));
    let file: RulesFile = toml::from_str(source).map_err(|e| toml_error(source, &e))?;

    let mut rules = Vec::with_capacity(file.rule.len());
    for (i, entry) in file.rule.iter().enumerate() {
        let index = i + 1;
        let header_line = line(entry.span());
        let entry = entry.get_ref();
        let name = entry.name.as_ref().map_or("", |n| n.get_ref().as_str());
        let missing = |key: &'static str| {
            invalid(key, format!("`{}` is missing", &key["rule.".len()..]))
                .in_rule(index, name)
                .at_line(header_line)
        };
        let (Some(name_value), Some(pattern), Some(answer)) =
            (&entry.name, &entry.pattern, &entry.answer)
        else {
            return Err(match (&entry.name, &entry.pattern) {
                (None, _) => missing("rule.name"),
                (_, None) => missing("rule.pattern"),
                _ => missing("rule.answer"),
            });
        };
        let rule = Rule::new(name, pattern.get_ref(), answer.get_ref()).map_err(|e| {
            let span = match e.key() {
                "rule.name" => name_value.span(),
                "rule.pattern" => pattern.span(),
                _ => answer.span(),
            };
            e.in_rule(index, name).at_line(line(span))
        })?;
        rules.push(rule);
    }
    if let Some(i) = first_duplicate(&rules) {
        let span = file.rule[i].get_ref().name.as_ref().map(|n| n.span());
        return Err(duplicate(&rules[i].name)
            .in_rule(i + 1, &rules[i].name)
            .at_line(span.and_then(line)));
    }

    let mut config = DegradeConfig::new(rules)?;
    if let Some(generic) = &file.generic {
        config = config
            .generic(generic.get_ref().as_str())
            .map_err(|e| e.at_line(line(generic.span())))?;
    }
    if let Some(status) = &file.status {
        let code = u16::try_from(*status.get_ref())
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
            .ok_or_else(|| {
                invalid(
                    "status",
                    format!("{} is not an HTTP status", status.get_ref()),
                )
            })
            .and_then(|code| config.clone().status(code));
        config = code.map_err(|e| e.at_line(line(status.span())))?;
    }
    if let Some(retry_after) = &file.retry_after {
        let secs = u64::try_from(*retry_after.get_ref()).map_err(|_| {
            invalid("retry_after", "a number of seconds cannot be negative")
                .at_line(line(retry_after.span()))
        })?;
        config = config.retry_after(std::time::Duration::from_secs(secs));
    }
    Ok(config)
}

/// The line, from 1, of byte `at` of `source`.
fn line_of(source: &str, at: usize) -> usize {
    let bytes = source.as_bytes();
    bytes[..at.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// What the TOML parser rejected, with its line and, when it lies in a rule, that rule.
fn toml_error(source: &str, error: &toml::de::Error) -> InvalidConfig {
    let mut invalid = invalid("toml", error.message().trim_end());
    if let Some(span) = error.span() {
        invalid = invalid.at_line(Some(line_of(source, span.start)));
        if let Some((index, name)) = rule_at(source, span.start) {
            invalid = invalid.in_rule(index, name.as_deref().unwrap_or(""));
        }
    }
    invalid
}

/// The rule (position from 1, and name if it has a string one) whose text holds byte
/// `at`: from its `[[rule]]` header (or inline table) to the next table or rule.
fn rule_at(source: &str, at: usize) -> Option<(usize, Option<String>)> {
    let document = toml::de::DeTable::parse(source).ok()?;
    let table = document.get_ref();
    let rules = table.get("rule")?.get_ref().as_array()?;
    // Top-level keys after the first rule can only be other tables' headers: they end
    // the rule before them.
    let mut bounds: Vec<usize> = table
        .iter()
        .filter(|(key, _)| key.get_ref() != "rule")
        .map(|(key, _)| key.span().start)
        .collect();
    bounds.extend(rules.iter().map(|r| r.span().start));
    for (i, rule) in rules.iter().enumerate() {
        let start = rule.span().start;
        let end = bounds
            .iter()
            .copied()
            .filter(|&b| b > start)
            .min()
            .unwrap_or(usize::MAX);
        if (start..end).contains(&at) {
            let name = rule
                .get_ref()
                .as_table()
                .and_then(|t| t.get("name"))
                .and_then(|n| n.get_ref().as_str())
                .map(str::to_owned);
            return Some((i + 1, name));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }

    #[test]
    fn errors_in_inline_rules_name_the_rule() {
        let source = r#"rule = [
  { name = "a", pattern = "x", answer = "y" },
  { name = "b", pattern = "x", answr = "y" },
]"#;
        let error = DegradeConfig::from_toml_str(source).unwrap_err();
        assert_eq!(error.key(), "toml");
        assert_eq!(error.item_name(), Some("b"));
        assert_eq!(error.item_index(), Some(2));
        assert_eq!(error.line(), Some(3));
    }

    #[test]
    fn a_table_after_the_rules_is_not_blamed_on_them() {
        let source = "[[rule]]\nname = \"a\"\npattern = \"x\"\nanswer = \"y\"\n\n[extra]\nk = 1\n";
        let error = DegradeConfig::from_toml_str(source).unwrap_err();
        assert_eq!(error.key(), "toml");
        assert_eq!(error.line(), Some(6));
        assert_eq!(error.item_index(), None, "{error}");
    }
}
