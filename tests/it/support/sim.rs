//! `llmgate sim` as a process.

use std::net::SocketAddr;

use super::*;

/// `llmgate sim --api API` running as a child process, killed on drop.
pub struct SimProcess {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl SimProcess {
    /// Starts `llmgate sim --api api` on a free port with an instant,
    /// unpaced model of `output_tokens` tokens, and waits for it to listen.
    pub async fn start(api: &str, output_tokens: u32) -> SimProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_llmgate"))
            .args([
                "sim",
                "--api",
                api,
                "--listen",
                "127.0.0.1:0",
                "--ttft",
                "0ms",
            ])
            .args(["--tokens-per-second", "0", "--output-tokens"])
            .arg(output_tokens.to_string())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start llmgate sim");
        let stdout = child.stdout.take().expect("stdout");
        let mut running = SimProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let line = tokio::time::timeout(
            PATIENCE,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let _ = std::io::BufReader::new(stdout).read_line(&mut line);
                line
            }),
        )
        .await
        .expect("llmgate sim says where it listens in time")
        .expect("reader");
        assert!(
            line.contains(&format!("({api} API)")),
            "unexpected first line {line:?}"
        );
        running.addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        running
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
