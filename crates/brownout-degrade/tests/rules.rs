//! Loading rules: from code and from TOML, good files and bad ones.

use std::time::Duration;

use brownout_degrade::{DegradeConfig, InvalidConfig, Rule, DEFAULT_GENERIC_ANSWER};
use http::StatusCode;

const GOOD: &str = r#"
# Answers while the provider is down.
generic = "The assistant is briefly unavailable. Please try again in a few minutes."
status = 503
retry_after = 30

[[rule]]
name = "refunds"
pattern = "(?i)refund"
answer = "You can request a refund from Settings › Billing."

[[rule]]
name = "opening-hours"
pattern = '''(?i)\bopen(ing)?\b.*\bhours?\b'''
answer = """
We are open 9:00–17:00, Monday to Friday."""
"#;

fn load_error(source: &str) -> InvalidConfig {
    DegradeConfig::from_toml_str(source).expect_err("the file is refused")
}

#[test]
fn a_good_file_loads_every_setting() {
    let config = DegradeConfig::from_toml_str(GOOD).unwrap();
    assert_eq!(
        config.generic_answer(),
        "The assistant is briefly unavailable. Please try again in a few minutes."
    );
    let names: Vec<&str> = config.rules().iter().map(Rule::name).collect();
    assert_eq!(names, ["refunds", "opening-hours"]);
    assert_eq!(
        config.rules()[1].answer(),
        "We are open 9:00–17:00, Monday to Friday."
    );
    assert_eq!(
        config
            .rule_for("What are your opening hours?")
            .map(Rule::name),
        Some("opening-hours")
    );
    assert_eq!(
        config.rule_for("REFUND me").map(Rule::name),
        Some("refunds")
    );
    assert!(config.rule_for("hello").is_none());
    let printed = format!("{config:?}");
    assert!(
        printed.contains("503") && printed.contains("30s"),
        "{printed}"
    );
}

#[test]
fn an_empty_file_is_the_defaults() {
    let config = DegradeConfig::from_toml_str("").unwrap();
    assert!(config.rules().is_empty());
    assert_eq!(config.generic_answer(), DEFAULT_GENERIC_ANSWER);
}

#[test]
fn a_file_loads_from_disk_and_a_missing_one_is_named() {
    let dir = std::env::temp_dir().join(format!("brownout-degrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rules.toml");
    std::fs::write(&path, GOOD).unwrap();
    assert_eq!(DegradeConfig::from_file(&path).unwrap().rules().len(), 2);
    std::fs::remove_file(&path).unwrap();
    let error = DegradeConfig::from_file(&path).unwrap_err();
    assert_eq!(error.key(), "file");
    assert!(error.to_string().contains("rules.toml"), "{error}");
    let _ = std::fs::remove_dir(&dir);
}

#[test]
fn a_syntax_error_gives_its_line() {
    let error = load_error("generic = \"ok\"\n\n[[rule]]\nname = \"refunds\n");
    assert_eq!(error.key(), "toml");
    assert_eq!(error.line(), Some(4));
    assert!(error.to_string().contains("at line 4"), "{error}");
}

#[test]
fn an_invalid_regex_names_the_rule_and_its_line() {
    let source = "[[rule]]\nname = \"ok\"\npattern = \"a\"\nanswer = \"b\"\n\n[[rule]]\nname = \"refunds\"\npattern = \"(?i)refund(\"\nanswer = \"See Settings.\"\n";
    let error = load_error(source);
    assert_eq!(error.key(), "rule.pattern");
    assert_eq!(error.item_name(), Some("refunds"));
    assert_eq!(error.item_index(), Some(2));
    assert_eq!(error.line(), Some(8));
    let message = error.to_string();
    assert!(
        message.starts_with("invalid degrade setting `rule.pattern` in rule `refunds` at line 8: not a valid regular expression"),
        "{message}"
    );
}

#[test]
fn an_empty_answer_names_the_rule_and_its_line() {
    let source = "[[rule]]\nname = \"refunds\"\npattern = \"refund\"\nanswer = \"  \"\n";
    let error = load_error(source);
    assert_eq!(error.key(), "rule.answer");
    assert_eq!(error.item_name(), Some("refunds"));
    assert_eq!(error.line(), Some(4));
}

#[test]
fn an_unknown_key_names_the_rule_and_its_line() {
    let source = "[[rule]]\nname = \"a\"\npattern = \"a\"\nanswer = \"b\"\n\n[[rule]]\nname = \"refunds\"\npatern = \"refund\"\nanswer = \"b\"\n";
    let error = load_error(source);
    assert_eq!(error.key(), "toml");
    assert_eq!(error.item_name(), Some("refunds"));
    assert_eq!(error.item_index(), Some(2));
    assert_eq!(error.line(), Some(8));
    assert!(error.to_string().contains("patern"), "{error}");

    // At the top level.
    let error = load_error("generic = \"x\"\nstatuss = 503\n");
    assert_eq!(error.key(), "toml");
    assert_eq!(error.line(), Some(2));
    assert_eq!(error.item_index(), None);
    assert!(error.to_string().contains("statuss"), "{error}");
}

#[test]
fn a_duplicate_name_points_at_the_second_rule() {
    let source = "[[rule]]\nname = \"refunds\"\npattern = \"a\"\nanswer = \"b\"\n\n[[rule]]\nname = \"refunds\"\npattern = \"c\"\nanswer = \"d\"\n";
    let error = load_error(source);
    assert_eq!(error.key(), "rule.name");
    assert_eq!(error.item_name(), Some("refunds"));
    assert_eq!(error.item_index(), Some(2));
    assert_eq!(error.line(), Some(7));
}

#[test]
fn an_unnamed_rule_is_named_by_its_position() {
    let source = "[[rule]]\nname = \"a\"\npattern = \"a\"\nanswer = \"b\"\n\n[[rule]]\npattern = \"c\"\nanswer = \"d\"\n";
    let error = load_error(source);
    assert_eq!(error.key(), "rule.name");
    assert_eq!(error.item_name(), None);
    assert_eq!(error.item_index(), Some(2));
    assert_eq!(error.line(), Some(6));
    assert!(
        error.to_string().contains("in rule #2 at line 6"),
        "{error}"
    );

    let error = load_error("[[rule]]\nname = \"\"\npattern = \"a\"\nanswer = \"b\"\n");
    assert_eq!(error.key(), "rule.name");
    assert_eq!(error.item_index(), Some(1));
    assert_eq!(error.line(), Some(2));

    // A type error in an unnamed rule.
    let error = load_error("[[rule]]\npattern = \"a\"\nanswer = 3\n");
    assert_eq!(error.key(), "toml");
    assert_eq!(error.item_index(), Some(1));
    assert_eq!(error.item_name(), None);
    assert_eq!(error.line(), Some(3));
}

#[test]
fn missing_keys_are_named() {
    let error = load_error("[[rule]]\nname = \"refunds\"\nanswer = \"b\"\n");
    assert_eq!(error.key(), "rule.pattern");
    assert_eq!(error.item_name(), Some("refunds"));
    assert_eq!(error.line(), Some(1));
    let error = load_error("\n[[rule]]\nname = \"refunds\"\npattern = \"b\"\n");
    assert_eq!(error.key(), "rule.answer");
    assert_eq!(error.line(), Some(2));
}

#[test]
fn top_level_settings_are_checked() {
    for (source, key, line) in [
        ("generic = \"\"\n", "generic", 1),
        ("\nstatus = 99\n", "status", 2),
        ("status = 204\n", "status", 1),
        ("status = 70000\n", "status", 1),
        ("retry_after = -1\n", "retry_after", 1),
        ("status = \"503\"\n", "toml", 1),
        ("rule = 3\n", "toml", 1),
    ] {
        let error = load_error(source);
        assert_eq!(
            (error.key(), error.line()),
            (key, Some(line)),
            "{source:?}: {error}"
        );
    }
}

#[test]
fn code_built_rules_are_checked_too() {
    let error = Rule::new("refunds", "[", "answer").unwrap_err();
    assert_eq!(
        (error.key(), error.item_name()),
        ("rule.pattern", Some("refunds"))
    );
    assert_eq!(error.line(), None);
    assert_eq!(Rule::new("", "a", "b").unwrap_err().key(), "rule.name");
    assert_eq!(
        Rule::new("réfunds", "a", "b").unwrap_err().key(),
        "rule.name"
    );
    assert_eq!(Rule::new("r", "", "b").unwrap_err().key(), "rule.pattern");
    assert_eq!(Rule::new("r", "a", "").unwrap_err().key(), "rule.answer");

    let rule = || Rule::new("refunds", "refund", "See Settings.").unwrap();
    let error = DegradeConfig::new([rule(), rule()]).unwrap_err();
    assert_eq!((error.key(), error.item_index()), ("rule.name", Some(2)));

    let config = DegradeConfig::new([rule()])
        .unwrap()
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .unwrap()
        .retry_after(Duration::from_secs(5));
    assert_eq!(config.rules().len(), 1);
}

#[test]
fn nonsense_never_panics() {
    let samples = [
        "\u{0}",
        "[[rule]]",
        "[[rule]]\n[[rule]]",
        "rule = [1, 2]",
        "rule = [{}]",
        "[rule]\nname = \"a\"",
        "generic = 1",
        "[[rule]]\nname = \"a\"\npattern = \"a{99999999}\"\nanswer = \"b\"",
        "status = 1e3",
        "retry_after = 99999999999999999999",
        "\u{feff}generic = \"x\"",
    ];
    for source in samples {
        let _ = DegradeConfig::from_toml_str(source);
    }
    // Every prefix of a good file either loads or is refused, never panics.
    for end in (0..GOOD.len()).filter(|&i| GOOD.is_char_boundary(i)) {
        let _ = DegradeConfig::from_toml_str(&GOOD[..end]);
    }
}
