//! The routing file as an operator meets it: what a valid file turns into,
//! and, for each mistake, the exact `line:column` reported and a message
//! that names the offending value and says how to fix it.
//!
//! One file per topic of the routing file, as the source is split; the
//! helpers here read problems, and [`RoutingFile`] builds files from the
//! skeleton every test needs, so a test shows only the fragment it is
//! about.
//!
//! Tests whose point is the whole document (the shipped files, YAML syntax
//! errors, every problem of a file in line order) write it out as one
//! string per line, so line numbers can be read off the array (the first
//! string is line 1); columns are 1-based.

mod access;
mod build;
mod file;
mod listen;
mod queue;
mod route;
mod state;
mod upstream;

use build::RoutingFile;

use crate::config::{Config, Problem};

/// The source name every test parses under.
pub(super) const FILE: &str = "routing.yaml";

/// A variable name no environment has; the tests never read the process
/// environment anyway (the env closure is theirs), but a name like this
/// keeps that obvious.
pub(super) const UNSET_VAR: &str = "LLMGATE_TEST_SURELY_UNSET_7F3A";

/// Joins `lines` into a file: `lines[0]` is line 1.
pub(super) fn yaml(lines: &[&str]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

pub(super) fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn parse_ok(text: impl AsRef<str>) -> Config {
    match Config::parse(text.as_ref(), FILE, &no_env) {
        Ok(config) => config,
        Err(err) => panic!("expected the file to be valid, got:\n{err}"),
    }
}

pub(super) fn problems_with_env(
    text: impl AsRef<str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Problem> {
    match Config::parse(text.as_ref(), FILE, env) {
        Ok(config) => panic!("expected the file to be rejected, but it parsed: {config:#?}"),
        Err(err) => {
            assert_eq!(err.source, FILE, "errors carry the file name given");
            err.problems
        }
    }
}

pub(super) fn problems(text: impl AsRef<str>) -> Vec<Problem> {
    problems_with_env(text, &no_env)
}

/// The single problem in `text`; fails if there are more or none.
pub(super) fn only_problem(text: impl AsRef<str>) -> Problem {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "expected exactly one problem, got {all:#?}");
    all.remove(0)
}

#[track_caller]
pub(super) fn assert_at(problem: &Problem, line: u64, column: u64) {
    assert_eq!(
        (problem.line, problem.column),
        (line, column),
        "wrong position for {problem:?}"
    );
}

#[track_caller]
pub(super) fn assert_mentions(problem: &Problem, needles: &[&str]) {
    for needle in needles {
        assert!(
            problem.message.contains(needle),
            "message {:?} should mention {needle:?}",
            problem.message
        );
    }
}

/// A YAML-level message must not repeat the position: the
/// `file:line:column:` prefix is the one place it appears.
#[track_caller]
pub(super) fn assert_no_position_in_message(problem: &Problem) {
    let lower = problem.message.to_ascii_lowercase();
    assert!(
        !lower.contains("line ") && !lower.contains("column"),
        "message repeats a position: {:?}",
        problem.message
    );
}

/// Files a test's routing file names (certificates, keys), in a directory
/// of their own that is removed on drop.
pub(super) struct Files(std::path::PathBuf);

impl Files {
    pub(super) fn new() -> Files {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llmgate-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        Files(dir)
    }

    /// Writes `contents` to `name` and returns its path as the file names it.
    pub(super) fn write(&self, name: &str, contents: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write a test file");
        path.to_str().expect("temp paths are UTF-8").to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA, and a certificate for `localhost` it issued with its key, as PEM.
pub(super) struct Pki {
    pub(super) ca: String,
    pub(super) cert: String,
    pub(super) key: String,
}

pub(super) fn pki() -> Pki {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("certificate");
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// The skeleton routing `demo` (alias `d`) and `big` to the simulator,
/// for tests of who may call which model.
fn guarded() -> RoutingFile {
    RoutingFile::new()
        .route("demo", &["aliases: [d]", "pools:", "  - upstream: local"])
        .route("big", &["pools:", "  - upstream: local"])
}
