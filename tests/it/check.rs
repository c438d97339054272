//! `llmgate check` and the command line's help, run as the real binary the
//! way an operator or a CI pipeline runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The routing file shipped with the crate.
const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/routing.yaml");

/// An environment variable no test sets; it is also removed from every
/// child's environment, so no test depends on the caller's.
const UNSET_VAR: &str = "LLMGATE_TEST_SURELY_UNSET_7F3A";

/// Runs `llmgate args…` to completion, with a controlled environment.
fn llmgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llmgate"));
    command
        .args(args)
        .env_remove(UNSET_VAR)
        .env_remove("LLMGATE_CONFIG")
        .env_remove("RUST_LOG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run the llmgate binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Joins `lines` into a file: `lines[0]` is line 1.
fn yaml(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// A file in the temp dir, unique to this process and test, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "llmgate-check-test-{}-{}.yaml",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write the temp routing file");
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("temp dir path is UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[track_caller]
fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected {needle:?} in:\n{haystack}"
    );
}

#[test]
fn check_on_the_shipped_file_prints_the_route_and_its_pool() {
    let output = llmgate(&["check", SHIPPED], &[]);
    let out = stdout(&output);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{out}\nstderr:\n{}",
        output.status,
        stderr(&output)
    );
    assert_contains(&out, "listen grpc 127.0.0.1:50051");
    assert_contains(&out, "upstream sim-local (sim) in process");
    assert_contains(&out, "route demo (aliases: demo-latest)");
    assert_contains(&out, "  -> sim-local as 'demo', weight 1 (100%)");
    assert!(
        !stderr(&output).contains("problem"),
        "a valid file reports no problems:\n{}",
        stderr(&output)
    );
}

#[test]
fn check_shows_weights_and_never_the_api_key() {
    const VAR: &str = "LLMGATE_TEST_CHECK_KEY_51C9";
    const SECRET: &str = "sk-test-check-must-not-print-77e1";
    let file = TempFile::new(&yaml(&[
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints: [http://10.0.0.11:8000]",
        &format!("    api_key_env: {VAR}"),
        "  local:",
        "    kind: sim",
        "routes:",
        "  - model: llama",
        "    pools:",
        "      - upstream: fleet",
        "        weight: 3",
        "        model: meta-llama/Llama-3.1-8B-Instruct",
        "      - upstream: local",
    ]));
    let output = llmgate(&["check", file.arg()], &[(VAR, SECRET)]);
    let out = stdout(&output);
    assert!(
        output.status.success(),
        "exit {:?}\nstderr:\n{}",
        output.status,
        stderr(&output)
    );
    assert_contains(
        &out,
        "upstream fleet (openai) http://10.0.0.11:8000/, with api key",
    );
    assert_contains(&out, "route llama\n");
    assert_contains(
        &out,
        "  -> fleet as 'meta-llama/Llama-3.1-8B-Instruct', weight 3 (75%)",
    );
    assert_contains(&out, "  -> local as 'llama', weight 1 (25%)");
    for shown in [&out, &stderr(&output)] {
        assert!(!shown.contains(SECRET), "the api key leaked:\n{shown}");
    }
}

/// One route to the simulator, for files whose point lies above it.
const SIM_ROUTE: [&str; 7] = [
    "upstreams:",
    "  local:",
    "    kind: sim",
    "routes:",
    "  - model: demo",
    "    pools:",
    "      - upstream: local",
];

#[test]
fn check_warns_when_other_hosts_can_call_without_a_key() {
    let routes = SIM_ROUTE;
    let open = TempFile::new(&yaml(
        &[
            &["listen:", "  grpc: 0.0.0.0:50051", "auth: { mode: none }"][..],
            &routes[..],
        ]
        .concat(),
    ));
    let output = llmgate(&["check", open.arg()], &[]);
    assert!(output.status.success(), "a warning is not a failure");
    let err = stderr(&output);
    assert_contains(
        &err,
        &format!("{}: warning: listen.grpc 0.0.0.0:50051", open.arg()),
    );
    assert_contains(&err, "auth is off (mode: none)");
    assert_contains(&stdout(&output), "auth: off (mode: none)");

    // Saying nothing about auth on such a listener is an error.
    let silent = TempFile::new(&yaml(
        &[&["listen:", "  grpc: 0.0.0.0:50051"][..], &routes[..]].concat(),
    ));
    let output = llmgate(&["check", silent.arg()], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert_contains(
        &stderr(&output),
        &format!(
            "{}:2:9: listen.grpc 0.0.0.0:50051 accepts calls from other hosts",
            silent.arg()
        ),
    );

    // On loopback, no warning.
    let output = llmgate(&["check", SHIPPED], &[]);
    assert!(!stderr(&output).contains("warning"), "{}", stderr(&output));
}

#[test]
fn check_refuses_an_exposed_http_listener_without_auth_as_it_does_grpc() {
    let silent = TempFile::new(&yaml(
        &[&["listen:", "  http: 0.0.0.0:8080"][..], &SIM_ROUTE[..]].concat(),
    ));
    let output = llmgate(&["check", silent.arg()], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    assert_contains(
        &stderr(&output),
        &format!(
            "{}:2:9: listen.http 0.0.0.0:8080 accepts calls from other hosts",
            silent.arg()
        ),
    );

    let open = TempFile::new(&yaml(
        &[
            &["listen:", "  http: 0.0.0.0:8080", "auth: { mode: none }"][..],
            &SIM_ROUTE[..],
        ]
        .concat(),
    ));
    let output = llmgate(&["check", open.arg()], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_contains(
        &stderr(&output),
        &format!("{}: warning: listen.http 0.0.0.0:8080", open.arg()),
    );
}

#[test]
fn check_never_echoes_a_literal_header_secret_and_warns_about_it() {
    const SECRET: &str = "sk-literal-in-file-never-print-90ad";
    let file = TempFile::new(&yaml(&[
        "upstreams:",
        "  cloud:",
        "    kind: openai",
        "    endpoints: [https://api.example.com]",
        "    headers:",
        &format!("      authorization: Bearer {SECRET}"),
        "      x-org: acme",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: cloud",
    ]));
    let output = llmgate(&["check", file.arg()], &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_contains(&stdout(&output), "headers: authorization, x-org");
    assert_contains(
        &stderr(&output),
        "warning: upstream 'cloud': header 'authorization' holds a credential written in the file",
    );
    for shown in [&stdout(&output), &stderr(&output)] {
        assert!(
            !shown.contains(SECRET),
            "the header secret leaked:\n{shown}"
        );
    }
}

#[test]
fn check_refuses_credentials_in_an_endpoint_url_without_quoting_them() {
    let file = TempFile::new(&yaml(&[
        "upstreams:",
        "  fleet:",
        "    kind: openai",
        "    endpoints: [http://admin:hunter2-secret@10.0.0.5:8000]",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: fleet",
    ]));
    let output = llmgate(&["check", file.arg()], &[]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_contains(&err, &format!("{}:4:17: upstream 'fleet'", file.arg()));
    assert_contains(&err, "api_key_env");
    assert!(
        !err.contains("hunter2-secret"),
        "the password leaked:\n{err}"
    );
}

#[test]
fn check_refuses_a_timeout_beyond_a_week_and_a_simulator_too_slow_to_schedule() {
    let file = TempFile::new(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "    timeout: 300000000000y",
        "    sim: { tokens_per_second: 1e-300 }",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]));
    let output = llmgate(&["check", file.arg()], &[]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert_contains(&err, &format!("{}:4:14: ", file.arg()));
    assert_contains(&err, "7days");
    assert_contains(&err, &format!("{}:5:31: ", file.arg()));
    assert_contains(&err, "tokens_per_second");
}

#[test]
fn check_names_keys_and_where_they_come_from_but_never_the_keys() {
    const KEY: &str = "sk-gw-check-never-print-31b7";
    let auth = [
        "auth:",
        "  keys:",
        "    - name: search",
        "      env: LLMGATE_TEST_CHECK_CALLER_KEY",
        "      models: [demo]",
        "      limits: { requests_per_minute: 60 }",
    ];
    let file = TempFile::new(&yaml(&[&auth[..], &SIM_ROUTE[..]].concat()));
    let output = llmgate(
        &["check", file.arg()],
        &[("LLMGATE_TEST_CHECK_CALLER_KEY", KEY)],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert_contains(
        &out,
        "  key search (from env LLMGATE_TEST_CHECK_CALLER_KEY): demo; 60 requests/min",
    );
    for shown in [&out, &stderr(&output)] {
        assert!(!shown.contains(KEY), "the key leaked:\n{shown}");
    }
}

#[test]
fn check_on_a_broken_file_lists_every_problem_and_exits_1() {
    let file = TempFile::new(&yaml(&[
        "upstreams:",
        "  cloud:",
        "    kind: openai",
        "    endpoints: [ftp://10.0.0.5]",
        &format!("    api_key_env: {UNSET_VAR}"),
        "    timeout: 5 parsecs",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: clod",
    ]));
    let output = llmgate(&["check", file.arg()], &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{err}");
    assert!(
        stdout(&output).is_empty(),
        "nothing is described for a broken file:\n{}",
        stdout(&output)
    );
    let path = file.path().display();
    let expected = [
        (
            4,
            17,
            "endpoint 'ftp://10.0.0.5' must start with http:// or https://",
        ),
        (5, 18, UNSET_VAR),
        (6, 14, "'5 parsecs' is not a duration"),
        (10, 19, "unknown upstream 'clod'; defined upstreams: cloud"),
    ];
    let lines: Vec<&str> = err.lines().collect();
    for (line, column, needle) in expected {
        let prefix = format!("{path}:{line}:{column}: ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&prefix) && l.contains(needle)),
            "expected a line starting {prefix:?} mentioning {needle:?} in:\n{err}"
        );
    }
    // In file order, so an operator can work down the file.
    let positions: Vec<usize> = expected
        .iter()
        .map(|(line, column, _)| {
            err.find(&format!("{path}:{line}:{column}: "))
                .expect("position present")
        })
        .collect();
    assert!(positions.is_sorted(), "problems out of order:\n{err}");
    assert_contains(&err, &format!("{path}: 4 problem(s); nothing was changed"));
}

#[test]
fn check_reports_a_yaml_error_with_its_position() {
    let file = TempFile::new(&yaml(&[
        "upstreams:",
        "  local:",
        "    kind: sim",
        "    timout: 30s",
        "routes:",
        "  - model: demo",
        "    pools:",
        "      - upstream: local",
    ]));
    let output = llmgate(&["check", file.arg()], &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{err}");
    let path = file.path().display();
    assert_contains(&err, &format!("{path}:4:5: unknown field `timout`"));
    assert_contains(&err, "timeout");
    assert_contains(&err, &format!("{path}: 1 problem(s); nothing was changed"));
}

#[test]
fn check_on_a_missing_file_says_it_cannot_read_it() {
    let path = std::env::temp_dir().join(format!(
        "llmgate-check-test-{}-surely-missing.yaml",
        std::process::id()
    ));
    let arg = path.to_str().expect("temp dir path is UTF-8");
    let output = llmgate(&["check", arg], &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{err}");
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    assert_contains(&err, &format!("{arg}: cannot read the file: "));
    assert_contains(&err, &format!("{arg}: 1 problem(s); nothing was changed"));
}

#[test]
fn check_without_a_file_is_a_usage_error() {
    let output = llmgate(&["check"], &[]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{err}");
    assert_contains(&err, "<FILE>");
}

#[test]
fn help_lists_the_subcommands() {
    let output = llmgate(&["--help"], &[]);
    let out = stdout(&output);
    assert!(output.status.success(), "exit {:?}", output.status);
    for subcommand in ["serve", "check", "chat", "sim"] {
        assert!(
            out.lines()
                .any(|line| line.trim_start().starts_with(&format!("{subcommand} "))),
            "--help should list {subcommand}:\n{out}"
        );
    }
}

#[test]
fn serve_help_documents_the_config_flag() {
    let output = llmgate(&["serve", "--help"], &[]);
    let out = stdout(&output);
    assert!(output.status.success(), "exit {:?}", output.status);
    assert_contains(&out, "-c, --config <CONFIG>");
    assert_contains(&out, "[env: LLMGATE_CONFIG");
    assert_contains(&out, "[default: routing.yaml]");
}

#[test]
fn check_help_says_what_it_is_for() {
    let output = llmgate(&["check", "--help"], &[]);
    let out = stdout(&output);
    assert!(output.status.success(), "exit {:?}", output.status);
    assert_contains(&out, "<FILE>");
    assert_contains(&out, "Validate a routing file");
}
