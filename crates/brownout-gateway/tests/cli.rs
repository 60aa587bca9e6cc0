//! The `brownout-gateway` binary: configuration errors, the demo, and a graceful stop.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const BIN: &str = env!("CARGO_BIN_EXE_brownout-gateway");

/// A fresh directory for this test's files.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("brownout-gateway-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.toml")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("BROWNOUT_TEST_UNSET_KEY")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_accepts_the_example_configuration() {
    let output = run(&["check", "--config", example().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(": ok ("), "{stdout}");
    // Every layer, fallback included, on or off and set by the file or default.
    for layer in ["degrade", "cache", "fallback", "breaker", "queue", "retry"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().eq([layer, "on", "set"])),
            "no `{layer} on set` in\n{stdout}"
        );
    }
}

#[test]
fn a_bad_configuration_is_refused_with_its_key_and_line() {
    let dir = scratch("bad-config");
    let example = std::fs::read_to_string(example()).unwrap();

    // An unknown key, both for check and for serve (which never starts listening).
    let misspelt = example.replace("max_attempts = 2", "max_atempts = 2");
    let line = misspelt
        .lines()
        .position(|l| l.starts_with("max_atempts"))
        .unwrap()
        + 1;
    let path = dir.join("misspelt.toml");
    std::fs::write(&path, &misspelt).unwrap();
    for command in ["check", "serve"] {
        let output = run(&[command, "--config", path.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{command}: {}",
            stderr(&output)
        );
        let message = stderr(&output);
        assert!(
            message.contains(&format!(
                "line {line}, column 1, key retry.max_atempts: unknown field `max_atempts`"
            )),
            "{command}: {message}"
        );
    }

    // A key held in an environment variable that is not set.
    let keyed = example.replacen(
        "pass_through_key = true    # callers send their own key...",
        "api_key_env = \"BROWNOUT_TEST_UNSET_KEY\"",
        1,
    );
    assert_ne!(keyed, example);
    let path = dir.join("keyed.toml");
    std::fs::write(&path, &keyed).unwrap();
    let output = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("key provider[0].api_key_env: the environment variable BROWNOUT_TEST_UNSET_KEY is not set"),
        "{}",
        stderr(&output)
    );

    // A file that is not there.
    let output = run(&[
        "check",
        "--config",
        dir.join("absent.toml").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("absent.toml: cannot read the configuration"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_lists_every_layer_on_or_off_and_default_or_set() {
    let dir = scratch("check-layers");
    let path = dir.join("gateway.toml");
    let text = common::config_text("http://127.0.0.1:9", "[cache]\nenabled = false\n").replace(
        "cascade = [{ model = \"gpt-4.1\" }, { model = \"gpt-4.1-mini\" }]",
        "",
    );
    std::fs::write(&path, text).unwrap();
    let output = run(&["check", "--config", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for expected in [
        ["degrade", "on", "default"],
        ["cache", "off", "set"],
        ["fallback", "on", "set"],
        ["breaker", "on", "default"],
        ["queue", "off", "default"],
        ["retry", "on", "set"],
    ] {
        assert!(
            stdout.lines().any(|l| l.split_whitespace().eq(expected)),
            "no {expected:?} in\n{stdout}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_refuses_a_base_url_with_a_password_and_never_prints_it() {
    let dir = scratch("userinfo");
    let path = dir.join("gateway.toml");
    let text = common::config_text("http://operator:hunter2@127.0.0.1:9", "");
    std::fs::write(&path, text).unwrap();
    let output = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("key provider[0].base_url"), "{message}");
    assert!(message.contains("api_key_env"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("hunter2"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[cfg(feature = "demo")]
fn without_arguments_it_runs_the_demo() {
    let output = run(&[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Everything below is simulated"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["naive", "retry-only", "brownout"])),
        "no table header in\n{stdout}"
    );
    for row in [
        "answered",
        "  fallback",
        "amplification",
        "latency p50",
        "latency p99",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "no {row:?} row in\n{stdout}"
        );
    }
}

#[cfg(unix)]
mod signals {
    use std::{
        io::{BufRead, BufReader},
        process::{Command, Stdio},
        time::Duration,
    };

    use brownout_sim::{Fault, Latency, ModelScript, Script, Sim, SimServer};
    use http_body_util::BodyExt;

    use super::{common, scratch, BIN};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_lets_the_request_in_flight_finish_and_exits_zero() {
        // An upstream that takes two seconds to answer.
        let script = Script::new().seed(5).model(
            "claude-sonnet-4-5",
            ModelScript::new().latency(Latency::fixed(Duration::from_secs(2))),
        );
        let server = SimServer::bind("127.0.0.1:0", Sim::new(script))
            .await
            .unwrap();
        let sim = server.sim().clone();
        let upstream = server.spawn().unwrap();

        let dir = scratch("sigterm");
        let path = dir.join("gateway.toml");
        std::fs::write(&path, common::config_text(&upstream.url(), "")).unwrap();
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--log-level",
                "warn",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let first_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let url = first_line
            .trim()
            .strip_prefix("brownout-gateway: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first_line:?}"))
            .to_owned();
        let addr = url.trim_start_matches("http://").to_owned();

        // A slow request, in flight at the upstream when the signal comes.
        let request = common::anthropic(
            &format!("{url}/v1/messages"),
            "claude-sonnet-4-5",
            "Hello",
            false,
        );
        let in_flight = tokio::spawn(async move {
            let response = common::client().request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        });
        common::until(Duration::from_secs(10), || sim.stats().received == 1).await;
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());

        // New connections are refused while the request finishes.
        let signalled = std::time::Instant::now();
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            assert!(
                signalled.elapsed() < Duration::from_millis(1500),
                "still accepting connections after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!in_flight.is_finished(), "the upstream takes two seconds");

        let (status, body) = tokio::time::timeout(Duration::from_secs(10), in_flight)
            .await
            .expect("the request finished")
            .unwrap();
        assert_eq!(status, 200);
        let message: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(message["model"], "claude-sonnet-4-5");

        let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(exit.success(), "exited with {exit:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_grace_that_cuts_requests_off_exits_non_zero_and_says_how_many() {
        // An upstream that never answers: the request outlives the grace period.
        let script = Script::new()
            .seed(5)
            .model("claude-sonnet-4-5", ModelScript::new().fault(Fault::hang()));
        let server = SimServer::bind("127.0.0.1:0", Sim::new(script))
            .await
            .unwrap();
        let sim = server.sim().clone();
        let upstream = server.spawn().unwrap();

        let dir = scratch("cut-off");
        let path = dir.join("gateway.toml");
        let text = common::config_text(&upstream.url(), "")
            .replace("shutdown_grace = \"10s\"", "shutdown_grace = \"200ms\"");
        std::fs::write(&path, text).unwrap();
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--config",
                path.to_str().unwrap(),
                "--log-level",
                "error",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let first_line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let url = first_line
            .trim()
            .strip_prefix("brownout-gateway: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first_line:?}"))
            .to_owned();
        let request = common::anthropic(
            &format!("{url}/v1/messages"),
            "claude-sonnet-4-5",
            "Hello",
            false,
        );
        let in_flight = tokio::spawn(async move { common::client().request(request).await });
        common::until(Duration::from_secs(10), || sim.stats().received == 1).await;
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(
            message.contains("cut off 1 connection(s) with requests in flight"),
            "{message}"
        );
        // The caller saw its connection end, not an answer.
        let result = tokio::time::timeout(Duration::from_secs(10), in_flight)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_err(), "{result:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
