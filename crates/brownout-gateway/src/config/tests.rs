use super::*;

const PROVIDER: &str = r#"
[[provider]]
name = "anthropic"
api = "anthropic"
base_url = "http://127.0.0.1:8787"
pass_through_key = true
"#;

const ROUTE: &str = r#"
[routes."/v1/messages"]
provider = "anthropic"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str_with_env(text, |name| match name {
        "GOOD_KEY" => Some("sk-ant-secret-1".into()),
        "BAD_KEY" => Some("sk-ant\nsecret-2".into()),
        _ => None,
    })
}

/// The error of `text`, which must be refused.
fn refused(text: &str) -> ConfigError {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle present")
        + 1
}

#[test]
fn the_example_is_accepted_with_its_cascades_and_layers() {
    let config = parse(crate::EXAMPLE_CONFIG).unwrap();
    assert_eq!(config.listen(), "127.0.0.1:8080".parse().unwrap());
    assert_eq!(config.shutdown_grace(), Duration::from_secs(30));
    assert_eq!(config.providers().len(), 2);
    let messages = config.messages().unwrap();
    let models: Vec<&str> = messages
        .cascade()
        .unwrap()
        .targets()
        .iter()
        .map(|t| t.model())
        .collect();
    assert_eq!(models, ["claude-sonnet-4-5", "claude-haiku-4-5"]);
    assert_eq!(
        config.providers()[config.chat_completions().unwrap().provider()].family(),
        Family::OpenAi
    );
    assert!(config.layers_enabled().iter().all(|(_, on)| *on));
    assert_eq!(config.headers(), Headers::default());
    assert_eq!(config.forward_to().name(), "anthropic");
}

#[test]
fn the_examples_breakers_probe_a_recovered_model_within_10s() {
    // The figures in brownout-queue's BENCHMARKS.md were measured with these: a model
    // that is back is skipped at most `open_for_max`, and two good probes close it.
    for text in [
        crate::EXAMPLE_CONFIG,
        include_str!("../../gateway.sim.toml"),
    ] {
        let config = parse(text).unwrap();
        let breaker = format!("{:?}", config.breaker.unwrap());
        assert!(
            breaker.contains("Growing(GrowingOpen { base: 10s, max: 10s })"),
            "{breaker}"
        );
        assert!(
            breaker.contains("half_open_probes: 1, half_open_successes: 2"),
            "{breaker}"
        );
    }
}

#[test]
fn the_smallest_config_has_every_layer_on() {
    let config = parse(&format!("{PROVIDER}{ROUTE}")).unwrap();
    assert!(config.layers_enabled().iter().all(|(_, on)| *on));
    assert!(config.messages().unwrap().cascade().is_none());
    assert!(config.chat_completions().is_none());
}

#[test]
fn layers_can_be_turned_off() {
    let text = format!(
        "{PROVIDER}{ROUTE}\n[retry]\nenabled = false\n[breaker]\nenabled = false\n[cache]\nenabled = false\n[degrade]\nenabled = false\n"
    );
    let config = parse(&text).unwrap();
    assert!(config.layers_enabled().iter().all(|(_, on)| !*on));
}

#[test]
fn unknown_keys_are_refused_with_their_key_and_line() {
    let text = format!("{PROVIDER}{ROUTE}\n[retry]\nmax_attempts = 3\nmax_atempts = 4\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("retry.max_atempts"));
    assert_eq!(e.line(), Some(line_of(&text, "max_atempts = 4")));
    assert!(e.message().contains("unknown field `max_atempts`"), "{e}");

    let text = format!("retyr = 1\n{PROVIDER}{ROUTE}");
    let e = refused(&text);
    assert_eq!(e.key(), Some("retyr"));
    assert_eq!(e.line(), Some(1));

    let text = format!("{PROVIDER}\n[routes.\"/v1/complete\"]\nprovider = \"anthropic\"\n");
    let e = refused(&text);
    assert!(e.message().contains("unknown field `/v1/complete`"), "{e}");
    assert!(e.message().contains("/v1/chat/completions"), "{e}");
}

#[test]
fn keys_inside_cascades_are_written_as_in_the_file() {
    let text = format!(
        "{PROVIDER}{ROUTE}cascade = [{{ model = \"a\" }}, {{ model = \"b\", extra = 1 }}]\n"
    );
    let e = refused(&text);
    assert_eq!(e.key(), Some("routes.\"/v1/messages\".cascade[1].extra"));
    assert_eq!(e.line(), Some(line_of(&text, "extra")));
}

#[test]
fn a_missing_environment_variable_is_named() {
    let text = format!(
        "{}{ROUTE}",
        PROVIDER.replace(
            "pass_through_key = true",
            "api_key_env = \"ANTHROPIC_API_KEY_MISSING\""
        )
    );
    let e = refused(&text);
    assert_eq!(e.key(), Some("provider[0].api_key_env"));
    assert_eq!(e.line(), Some(line_of(&text, "api_key_env")));
    assert!(
        e.message().contains("ANTHROPIC_API_KEY_MISSING is not set"),
        "{e}"
    );
}

#[test]
fn a_key_is_read_from_the_environment_and_never_shown() {
    let text = format!(
        "{}{ROUTE}",
        PROVIDER.replace("pass_through_key = true", "api_key_env = \"GOOD_KEY\"")
    );
    let config = parse(&text).unwrap();
    let KeySource::Env { variable, header } = config.providers()[0].key() else {
        panic!("an env key");
    };
    assert_eq!(variable, "GOOD_KEY");
    assert_eq!(header.0, "x-api-key");
    assert_eq!(header.1, "sk-ant-secret-1");
    assert!(header.1.is_sensitive());
    assert!(!format!("{config:?}").contains("secret-1"));

    let text = format!(
        "{}{ROUTE}",
        PROVIDER.replace("pass_through_key = true", "api_key_env = \"BAD_KEY\"")
    );
    let e = refused(&text);
    assert!(e.message().contains("BAD_KEY holds characters"), "{e}");
    assert!(!e.to_string().contains("secret-2"), "{e}");
}

#[test]
fn an_openai_key_is_a_bearer_token() {
    let text = r#"
[[provider]]
name = "openai"
api = "openai"
base_url = "http://127.0.0.1:9000/"
api_key_env = "GOOD_KEY"

[routes."/v1/chat/completions"]
provider = "openai"
"#;
    let config = parse(text).unwrap();
    let KeySource::Env { header, .. } = config.providers()[0].key() else {
        panic!("an env key");
    };
    assert_eq!(header.0, "authorization");
    assert_eq!(header.1, "Bearer sk-ant-secret-1");
    assert_eq!(config.providers()[0].base_url(), "http://127.0.0.1:9000/");
}

#[test]
fn a_provider_must_say_where_its_key_comes_from() {
    let text = format!(
        "{}{ROUTE}",
        PROVIDER.replace("pass_through_key = true\n", "")
    );
    let e = refused(&text);
    assert_eq!(e.key(), Some("provider[0]"));
    assert!(e.message().contains("api_key_env"), "{e}");

    let text = format!("{}api_key_env = \"GOOD_KEY\"\n{ROUTE}", PROVIDER);
    let e = refused(&text);
    assert!(e.message().contains("exclude each other"), "{e}");
}

#[test]
fn https_base_urls_are_taken_and_malformed_ones_refused() {
    let text = format!(
        "{}{ROUTE}",
        PROVIDER.replace("http://127.0.0.1:8787", "https://api.anthropic.com")
    );
    let config = Config::from_toml_str(&text).unwrap();
    assert_eq!(
        config.providers()[0].base_url(),
        "https://api.anthropic.com/"
    );
    assert!(config.providers()[0].http2());
    assert!(config.providers()[0].ca_file().is_none());

    let text = format!(
        "{}{ROUTE}",
        PROVIDER.replace("http://127.0.0.1:8787", "ftp://api.anthropic.com")
    );
    let e = refused(&text);
    assert_eq!(e.key(), Some("provider[0].base_url"));
    assert_eq!(e.line(), Some(line_of(&text, "base_url")));
    assert!(e.message().contains("needs the scheme https://"), "{e}");

    let text = format!(
        "{}{ROUTE}",
        PROVIDER.replace("http://127.0.0.1:8787", "127.0.0.1:8787")
    );
    assert_eq!(refused(&text).key(), Some("provider[0].base_url"));
}

#[test]
fn durations_need_a_unit() {
    let text = format!("{PROVIDER}{ROUTE}\n[retry]\nattempt_timeout = \"30 seconds\"\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("retry.attempt_timeout"));
    assert_eq!(e.line(), Some(line_of(&text, "attempt_timeout")));
    assert!(
        e.message().contains("`30 seconds` is not a duration"),
        "{e}"
    );

    let text = format!("{PROVIDER}{ROUTE}\nshutdown_grace = 30\n");
    // A top-level key after a table belongs to the table: write it first.
    let text = text.replace("\nshutdown_grace = 30\n", "");
    let text = format!("shutdown_grace = 30\n{text}");
    let e = refused(&text);
    assert_eq!(e.key(), Some("shutdown_grace"));
    assert!(e.message().contains("needs a unit"), "{e}");

    let text = format!("{PROVIDER}{ROUTE}\n[retry]\nmax_attempts = 0\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("retry.max_attempts"));
    assert!(e.message().contains("at least 1"), "{e}");
}

#[test]
fn values_the_layers_refuse_are_explained_with_their_key() {
    let text = format!("{PROVIDER}{ROUTE}\n[breaker]\nwindow = 20\nfailure_rate = 1.5\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("breaker.failure_rate"));
    assert_eq!(e.line(), Some(line_of(&text, "failure_rate")));
    assert!(e.message().contains("(0, 1]"), "{e}");

    let text = format!("{PROVIDER}{ROUTE}\n[breaker]\nwindow = 5\nminimum_calls = 10\n");
    assert_eq!(refused(&text).key(), Some("breaker.minimum_calls"));

    let text = format!("{PROVIDER}{ROUTE}\n[breaker]\nconsecutive_failures = 5\nwindow = 5\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("breaker.consecutive_failures"));
    assert!(e.message().contains("choose one policy"), "{e}");

    let text =
        format!("{PROVIDER}{ROUTE}\n[retry]\nbackoff = {{ base = \"10s\", cap = \"1s\" }}\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("retry.backoff"));
    assert_eq!(e.line(), Some(line_of(&text, "backoff")));

    let text = format!("{PROVIDER}{ROUTE}\n[retry]\nbudget = {{ ratio = -1.0 }}\n");
    assert_eq!(refused(&text).key(), Some("retry.budget"));
}

#[test]
fn routes_name_known_providers_of_their_api() {
    let text = format!("{PROVIDER}\n[routes.\"/v1/messages\"]\nprovider = \"antropic\"\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("routes.\"/v1/messages\".provider"));
    assert_eq!(e.line(), Some(line_of(&text, "\"antropic\"")));
    assert!(
        e.message()
            .contains("no provider is named `antropic` (the providers are: anthropic)"),
        "{e}"
    );

    let text = format!("{PROVIDER}\n[routes.\"/v1/chat/completions\"]\nprovider = \"anthropic\"\n");
    let e = refused(&text);
    assert!(e.message().contains("speaks the anthropic API"), "{e}");

    let e = refused(PROVIDER);
    assert_eq!(e.key(), Some("routes"));

    let text = format!("{PROVIDER}{ROUTE}cascade = [{{ model = \"a\" }}, {{ model = \"a\" }}]\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("routes.\"/v1/messages\".cascade"));
    assert!(e.message().contains("`a` appears twice"), "{e}");

    let text = format!("{PROVIDER}{ROUTE}cascade = [{{ model = \"a\", provider = \"nobody\" }}]\n");
    assert_eq!(
        refused(&text).key(),
        Some("routes.\"/v1/messages\".cascade[0].provider")
    );
}

#[test]
fn providers_sharing_an_endpoint_cannot_hold_keys() {
    let second = PROVIDER.replace("\"anthropic\"\napi", "\"second\"\napi");
    let text = format!("{PROVIDER}{second}{ROUTE}");
    assert!(
        parse(&text).is_ok(),
        "two pass-through providers may share an endpoint"
    );
    let text = format!(
        "{PROVIDER}{}{ROUTE}",
        second.replace("pass_through_key = true", "api_key_env = \"GOOD_KEY\"")
    );
    let e = refused(&text);
    assert_eq!(e.key(), Some("provider[1].base_url"));
}

#[test]
fn degrade_rules_are_checked_inline() {
    let text = format!(
        "{PROVIDER}{ROUTE}\n[degrade]\ngeneric = \"Back soon.\"\n\n[[degrade.rule]]\nname = \"refunds\"\npattern = \"(refund\"\nanswer = \"See Settings.\"\n"
    );
    let e = refused(&text);
    assert_eq!(e.key(), Some("degrade.rule[0].pattern"));
    assert_eq!(e.line(), Some(line_of(&text, "[[degrade.rule]]")));

    let text = format!("{PROVIDER}{ROUTE}\n[degrade]\nstatus = 304\n");
    assert_eq!(refused(&text).key(), Some("degrade.status"));

    let text = format!(
        "{PROVIDER}{ROUTE}\n[degrade]\nrules_file = \"x.toml\"\ngeneric = \"Back soon.\"\n"
    );
    assert!(refused(&text)
        .message()
        .contains("excludes inline settings"));
}

#[test]
fn a_rules_file_is_found_next_to_the_config_and_its_errors_carry_its_line() {
    let dir = std::env::temp_dir().join(format!("brownout-gateway-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("gateway.toml");
    std::fs::write(
        &config_path,
        format!("{PROVIDER}{ROUTE}\n[degrade]\nrules_file = \"rules.toml\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("rules.toml"), "generic = \"Back soon.\"\n").unwrap();
    let config = Config::from_file(&config_path).unwrap();
    assert_eq!(
        config.degrade.as_ref().unwrap().generic_answer(),
        "Back soon."
    );

    std::fs::write(
        dir.join("rules.toml"),
        "generic = \"Back soon.\"\n[[rule]]\nname = \"x\"\npattern = \"(\"\nanswer = \"y\"\n",
    )
    .unwrap();
    let e = Config::from_file(&config_path).unwrap_err();
    assert_eq!(e.file(), Some(config_path.as_path()));
    assert_eq!(e.key(), Some("degrade.rules_file"));
    assert!(e.message().contains("rules.toml"), "{e}");
    assert!(e.message().contains("at line 4"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_file_is_named() {
    let e = Config::from_file("/nonexistent/gateway.toml").unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/gateway.toml: cannot read"),
        "{e}"
    );
}

#[test]
fn syntax_errors_have_a_line() {
    let text = format!("{PROVIDER}{ROUTE}\n[retry\n");
    let e = refused(&text);
    assert_eq!(e.line(), Some(line_of(&text, "[retry")));
    assert_eq!(e.key(), None);
}

#[test]
fn a_base_url_with_user_info_is_refused_without_repeating_it() {
    for url in [
        "http://user:hunter2@127.0.0.1:8787",
        "https://user:hunter2@api.example.com",
        "http://hunter2@127.0.0.1:8787/proxy",
    ] {
        let text = PROVIDER.replace("http://127.0.0.1:8787", url) + ROUTE;
        let e = refused(&text);
        assert_eq!(e.key(), Some("provider[0].base_url"), "{e}");
        assert!(e.message().contains("api_key_env"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert_eq!(e.line(), Some(line_of(&text, "base_url")));
    }
}

#[test]
fn the_body_settings_moved_out_of_limits_and_say_where() {
    for (old, new) in [
        ("replay_limit = 1024", "body.replay_limit"),
        ("body_idle_timeout = \"5s\"", "body.idle_timeout"),
    ] {
        let text = format!("{PROVIDER}{ROUTE}\n[limits]\n{old}\n");
        let e = refused(&text);
        assert!(e.key().unwrap().starts_with("limits."), "{e}");
        assert!(e.message().contains(new), "{e}");
        assert_eq!(e.line(), Some(line_of(&text, old)));
    }
    let text = format!(
        "body_timeout = \"12s\"\n{PROVIDER}{ROUTE}\n[body]\nreplay_limit = 1024\nidle_timeout = \"5s\"\n[streams]\nidle_timeout = \"20s\"\n[connections]\nper_client = 8\ntotal = 100\n[headers]\nshould_retry = false\n"
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.limits().replay_limit_bytes(), 1024);
    assert_eq!(config.body_timeout(), Duration::from_secs(12));
    assert_eq!(config.stream_idle_timeout(), Duration::from_secs(20));
    assert_eq!(
        config.connections(),
        Connections {
            per_client: 8,
            total: 100
        }
    );
    assert!(!config.headers().should_retry);

    let defaults = parse(&format!("{PROVIDER}{ROUTE}")).unwrap();
    assert_eq!(defaults.body_timeout(), DEFAULT_BODY_TIMEOUT);
    assert_eq!(defaults.stream_idle_timeout(), Duration::from_secs(60));
    assert_eq!(defaults.connections().per_client, 256);
    assert!(defaults.headers().should_retry);
    let e = refused(&format!(
        "{PROVIDER}{ROUTE}\n[streams]\nidle_timeout = \"0s\"\n"
    ));
    assert_eq!(e.key(), Some("streams.idle_timeout"));
}

#[test]
fn every_layer_is_listed_with_on_off_and_default_or_set() {
    let config = parse(&format!("{PROVIDER}{ROUTE}\n[retry]\nenabled = false\n")).unwrap();
    let listed: Vec<(&str, bool, bool)> = config
        .layers()
        .iter()
        .map(|l| (l.name, l.on, l.set))
        .collect();
    assert_eq!(
        listed,
        [
            ("degrade", true, false),
            ("cache", true, false),
            ("fallback", false, false),
            ("breaker", true, false),
            ("queue", false, false),
            ("retry", false, true),
            ("limit", false, false),
        ]
    );
    let cascade = ROUTE.replace(
        "provider = \"anthropic\"",
        "provider = \"anthropic\"\ncascade = [{ model = \"a\" }, { model = \"b\" }]",
    );
    let config = parse(&format!("{PROVIDER}{cascade}")).unwrap();
    assert_eq!(
        config.layers()[2],
        LayerState {
            name: "fallback",
            on: true,
            set: true
        }
    );
}

#[test]
fn the_responses_route_needs_an_openai_provider() {
    let text = format!("{PROVIDER}{ROUTE}\n[routes.\"/v1/responses\"]\nprovider = \"anthropic\"\n");
    let e = refused(&text);
    assert_eq!(e.key(), Some("routes.\"/v1/responses\".provider"));
    assert!(e.message().contains("needs an openai one"), "{e}");
}

const QUEUE: &str = "\n[queue]\n";

#[test]
fn the_queue_is_off_without_its_section_and_on_with_the_gateway_defaults() {
    let off = parse(&format!("{PROVIDER}{ROUTE}")).unwrap();
    assert!(off.queue().is_none());
    let retry = format!("{:?}", off.retry.as_ref().unwrap());
    assert!(retry.contains("max_server_delay: 60s"), "{retry}");

    let on = parse(&format!("{PROVIDER}{ROUTE}{QUEUE}")).unwrap();
    let queue = format!("{:?}", on.queue().unwrap());
    for field in [
        "max_queue: 64",
        "max_wait: 800ms",
        "caller_share: 0.5",
        "recovery_limit: 32",
        "probe_after: Some(250ms)",
        "early_ack: Some(120ms)",
        "prefer_wait: PreferWait { up_to: 500ms }",
    ] {
        assert!(queue.contains(field), "{field} in {queue}");
    }
    // Wait or move: the retry layer sleeps a retry-after only up to prefer_wait.
    let retry = format!("{:?}", on.retry.as_ref().unwrap());
    assert!(retry.contains("max_server_delay: 500ms"), "{retry}");
    let state = on.layers().into_iter().find(|l| l.name == "queue").unwrap();
    assert!(state.on && state.set);

    let set = parse(&format!(
        "{PROVIDER}{ROUTE}{QUEUE}prefer_wait = \"300ms\"\nmax_wait = \"2s\"\nmax_queue = 8\ncaller_share = 0.25\nprobe_after = \"50ms\"\nearly_ack = \"80ms\"\nrecovery_limit = 4\npriority_header = \"x-tenant-priority\"\n"
    ))
    .unwrap();
    let queue = format!("{:?}", set.queue().unwrap());
    for field in [
        "max_queue: 8",
        "max_wait: 2s",
        "caller_share: 0.25",
        "recovery_limit: 4",
        "probe_after: Some(50ms)",
        "early_ack: Some(80ms)",
        "up_to: 300ms",
    ] {
        assert!(queue.contains(field), "{field} in {queue}");
    }
    assert!(format!("{:?}", set.retry.as_ref().unwrap()).contains("max_server_delay: 300ms"));

    let disabled = parse(&format!("{PROVIDER}{ROUTE}{QUEUE}enabled = false\n")).unwrap();
    assert!(disabled.queue().is_none());
    let state = disabled
        .layers()
        .into_iter()
        .find(|l| l.name == "queue")
        .unwrap();
    assert!(!state.on && state.set);
}

#[test]
fn bad_queue_values_are_refused_naming_the_key_and_line() {
    let cases = [
        ("max_wait = \"0s\"", "queue.max_wait", "longer than zero"),
        ("max_wait = \"soon\"", "queue.max_wait", ""),
        ("max_queue = 0", "queue.max_queue", "at least 1"),
        ("max_queue = -3", "queue.max_queue", "at least 1"),
        (
            "caller_share = 0.0",
            "queue.caller_share",
            "above 0 and at most 1",
        ),
        (
            "caller_share = 1.5",
            "queue.caller_share",
            "above 0 and at most 1",
        ),
        (
            "probe_after = \"0ms\"",
            "queue.probe_after",
            "longer than zero",
        ),
        ("early_ack = \"0ms\"", "queue.early_ack", "longer than zero"),
        ("recovery_limit = 0", "queue.recovery_limit", "at least 1"),
        (
            "priority_header = \"bad header\"",
            "queue.priority_header",
            "not a header name",
        ),
        (
            "priority_header = \"x-api-key\"",
            "queue.priority_header",
            "credential",
        ),
        (
            "prefer_wait = \"900ms\"",
            "queue.prefer_wait",
            "must not be longer than max_wait",
        ),
        (
            "max_wait = \"100ms\"",
            "queue.max_wait",
            "must not be longer than max_wait",
        ),
        ("max_depth = 3", "queue.max_depth", "unknown field"),
    ];
    for (line, key, message) in cases {
        let text = format!("{PROVIDER}{ROUTE}{QUEUE}{line}\n");
        let e = refused(&text);
        assert_eq!(e.key(), Some(key), "{line}: {e}");
        assert!(e.message().contains(message), "{line}: {e}");
        assert_eq!(e.line(), Some(line_of(&text, line)), "{line}: {e}");
    }
}

#[test]
fn retry_max_server_delay_is_refused_while_the_queue_decides_it() {
    let text = format!("{PROVIDER}{ROUTE}\n[retry]\nmax_server_delay = \"2s\"\n{QUEUE}");
    let e = refused(&text);
    assert_eq!(e.key(), Some("retry.max_server_delay"));
    assert!(e.message().contains("queue.prefer_wait"), "{e}");
    assert_eq!(e.line(), Some(line_of(&text, "max_server_delay")));
    // Without the queue it is the retry layer's own setting.
    let text = format!("{PROVIDER}{ROUTE}\n[retry]\nmax_server_delay = \"2s\"\n");
    assert!(format!("{:?}", parse(&text).unwrap().retry.unwrap()).contains("max_server_delay: 2s"));
}
