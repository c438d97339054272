//! The processes the bench measures (two sims, the gateway, nginx when
//! installed) and what `/proc` says about them: CPU time, RSS, open files.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{MODEL, OUTPUT_TOKENS, SLOW_MODEL, SLOW_OUTPUT_TOKENS};

// === child processes ===

/// A child process that is killed when dropped, so a panicking bench never
/// leaves a gateway, sim or nginx behind.
pub(crate) struct ChildGuard {
    /// The process.
    child: Child,
    /// Its stdout, kept open so a late write cannot hit a closed pipe.
    _stdout: Option<BufReader<ChildStdout>>,
    /// Its pid, for `/proc/<pid>/...`.
    pub(crate) pid: u32,
}

impl ChildGuard {
    /// Starts `llmgate ARGS` and reads one stdout line per entry of `tags`,
    /// each of which must be `llmgate: ...TAG... listening on ADDR`; returns
    /// the guard and the addresses in the order of `tags`.
    fn spawn_llmgate(args: &[&str], tags: &[&str]) -> (ChildGuard, Vec<SocketAddr>) {
        let what = args.first().copied().unwrap_or("llmgate");
        let mut child = Command::new(env!("CARGO_BIN_EXE_llmgate"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start `llmgate {what}`: {err}"));
        let stdout = child.stdout.take().expect("the child's stdout is piped");
        let pid = child.id();
        let mut stdout = BufReader::new(stdout);
        let mut addrs = Vec::new();
        for tag in tags {
            let mut line = String::new();
            let read = stdout
                .read_line(&mut line)
                .unwrap_or_else(|err| panic!("cannot read `llmgate {what}`'s stdout: {err}"));
            if read == 0 {
                panic!("`llmgate {what}` exited before printing its address (its stderr is above)");
            }
            let addr = line
                .trim()
                .strip_prefix("llmgate:")
                .filter(|rest| rest.contains(tag))
                .and_then(|rest| rest.rsplit_once("listening on "))
                .and_then(|(_, addr)| addr.trim().parse::<SocketAddr>().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "`llmgate {what}` printed {line:?}, expected \"llmgate: {tag} ... listening on ADDR\""
                    )
                });
            addrs.push(addr);
        }
        let guard = ChildGuard {
            child,
            _stdout: Some(stdout),
            pid,
        };
        (guard, addrs)
    }

    /// A sim answering `tokens` tokens per call at `tokens_per_second` (0:
    /// unpaced), first token at once.
    fn sim(tokens: u64, tokens_per_second: &str) -> (ChildGuard, SocketAddr) {
        let tokens = tokens.to_string();
        let args = [
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--ttft",
            "0s",
            "--tokens-per-second",
            tokens_per_second,
            "--output-tokens",
            &tokens,
        ];
        let (guard, addrs) = ChildGuard::spawn_llmgate(&args, &["sim"]);
        (guard, addrs[0])
    }
}

impl ChildGuard {
    /// Kills and reaps the child (again harmless).
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    /// Kills and reaps the child so no process outlives the bench.
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sims, the gateway in front of them, nginx in front of the fast sim
/// when installed, and the files written for them; all cleaned up on drop.
pub(crate) struct Processes {
    /// `llmgate serve`; declared first so it stops before its upstreams.
    pub(crate) gateway: ChildGuard,
    /// nginx proxying to `sim`, when an nginx binary was found and started.
    pub(crate) nginx: Option<Nginx>,
    /// `llmgate sim`, unpaced: the upstream of every load scenario.
    pub(crate) sim: ChildGuard,
    /// `llmgate sim` at one token a second: the upstream of the open
    /// streams.
    pub(crate) slow_sim: ChildGuard,
    /// Where the gateway's gRPC listener is.
    pub(crate) gateway_grpc: SocketAddr,
    /// Where the gateway's OpenAI HTTP listener is.
    pub(crate) gateway_http: SocketAddr,
    /// Where the fast sim listens.
    pub(crate) sim_addr: SocketAddr,
    /// Why nginx is not in the run, when it is not.
    pub(crate) nginx_skipped: Option<String>,
    /// The routing file, removed on drop.
    config_path: PathBuf,
}

impl Processes {
    /// Starts both sims, writes a routing file pointing at them, starts the
    /// gateway on it, and nginx in front of the fast sim if installed.
    /// `max_in_flight` is the gateway's `limits.max_in_flight`: it must
    /// admit every stream the bench holds open.
    pub(crate) fn start(max_in_flight: u64) -> Processes {
        let (sim, sim_addr) = ChildGuard::sim(OUTPUT_TOKENS, "0");
        let (slow_sim, slow_addr) = ChildGuard::sim(SLOW_OUTPUT_TOKENS, "1");
        let config_path =
            std::env::temp_dir().join(format!("llmgate-bench-{}.yaml", std::process::id()));
        // Everything else at its default: what the gateway costs as shipped.
        let yaml = format!(
            "listen:\n  grpc: 127.0.0.1:0\n  http: 127.0.0.1:0\n  metrics: 127.0.0.1:0\n\
             limits:\n  max_in_flight: {max_in_flight}\n\
             upstreams:\n\
             \x20 sim:\n    kind: openai\n    endpoints: [http://{sim_addr}]\n\
             \x20 slow:\n    kind: openai\n    endpoints: [http://{slow_addr}]\n\
             routes:\n\
             \x20 - model: {MODEL}\n    pools:\n      - upstream: sim\n        weight: 1\n\
             \x20 - model: {SLOW_MODEL}\n    pools:\n      - upstream: slow\n        weight: 1\n"
        );
        std::fs::write(&config_path, yaml).unwrap_or_else(|err| {
            panic!(
                "cannot write the routing file {}: {err}",
                config_path.display()
            )
        });
        let config_arg = config_path.to_string_lossy().into_owned();
        let (gateway, addrs) =
            ChildGuard::spawn_llmgate(&["serve", "--config", &config_arg], &["gRPC", "HTTP"]);
        let (nginx, nginx_skipped) = match Nginx::start(sim_addr) {
            Ok(nginx) => (Some(nginx), None),
            Err(why) => (None, Some(why)),
        };
        Processes {
            gateway,
            nginx,
            sim,
            slow_sim,
            gateway_grpc: addrs[0],
            gateway_http: addrs[1],
            sim_addr,
            nginx_skipped,
            config_path,
        }
    }
}

impl Drop for Processes {
    /// Stops the gateway, then removes its routing file (the other way
    /// round, the gateway would see the file go and log a failed reload);
    /// the other children's own guards stop them.
    fn drop(&mut self) {
        self.gateway.stop();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

// === nginx ===

/// nginx as a plain L7 proxy in front of the fast sim: one worker, no
/// master, its config, logs and temp files in a directory of its own.
pub(crate) struct Nginx {
    /// The process (`master_process off`: the one process does the work).
    pub(crate) process: ChildGuard,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its prefix directory, removed on drop.
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx proxying to `sim`, or says why it is not in the run (not
    /// installed, or it would not start; its error log is quoted).
    #[allow(clippy::disallowed_methods)] // polls for its listener before any runtime exists
    fn start(sim: SocketAddr) -> Result<Nginx, String> {
        let binary = find_nginx().ok_or("nginx not installed, skipped")?;
        let dir = std::env::temp_dir().join(format!("llmgate-bench-nginx-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|err| format!("nginx skipped: cannot create {}: {err}", dir.display()))?;
        let port =
            free_port().map_err(|err| format!("nginx skipped: no free port for it: {err}"))?;
        let d = dir.display();
        // `keepalive` pools upstream connections as the gateway and the
        // direct client do; `Connection ""` keeps them open; no buffering,
        // so SSE events pass one by one.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n\
             \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             \x20 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             \x20 scgi_temp_path {d}/scgi;\n\
             \x20 upstream sim {{ server {sim}; keepalive 64; }}\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n\
             \x20   location / {{\n      proxy_pass http://sim;\n      proxy_http_version 1.1;\n\
             \x20     proxy_set_header Connection \"\";\n      proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .map_err(|err| format!("nginx skipped: cannot write its config: {err}"))?;
        // `-e` so not even the start-up error log goes outside the directory.
        let child = Command::new(&binary)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| format!("nginx skipped: cannot start {}: {err}", binary.display()))?;
        let pid = child.id();
        let mut nginx = Nginx {
            process: ChildGuard {
                child,
                _stdout: None,
                pid,
            },
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if TcpStream::connect(nginx.addr).is_ok() {
                return Ok(nginx);
            }
            let exited = nginx.process.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                return Err(format!(
                    "nginx skipped: it did not start listening ({}); its error log: {}",
                    exited.map_or("timed out".to_string(), |status| status.to_string()),
                    log.trim()
                ));
            }
            // Blocking is fine: no runtime runs yet.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Nginx {
    /// Removes its directory once the process is gone.
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `nginx` on `PATH`, else in the sbin directories a distribution installs
/// it to (often missing from an unprivileged user's `PATH`).
fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// A port nobody listens on right now (bound and released at once).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// === file descriptors ===

/// Raises this process's soft open-file limit to its hard limit, which the
/// children inherit: holding N streams costs the gateway about N upstream
/// sockets and the slow sim as many. Uses `prlimit(1)` (no unsafe code in
/// the bench). Returns the soft limit in force afterwards.
pub(crate) fn raise_fd_limit() -> Option<u64> {
    let (soft, hard) = fd_limits()?;
    if soft < hard {
        let raised = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !raised {
            eprintln!("could not raise the open-file limit from {soft} to {hard} (prlimit)");
        }
    }
    fd_limits().map(|(soft, _)| soft)
}

/// Soft and hard "Max open files" of this process, from `/proc/self/limits`.
fn fd_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let mut numbers = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|field| {
            if field == "unlimited" {
                Some(u64::MAX)
            } else {
                field.parse().ok()
            }
        });
    Some((numbers.next()??, numbers.next()??))
}

/// Open file descriptors of `pid` (sockets included).
pub(crate) fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|dir| dir.count())
}

// === memory ===

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in MiB.
pub(crate) fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Resident memory of `pid` in MiB.
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS")
}

// === CPU accounting ===

/// utime + stime of a process in clock ticks, from `/proc/<pid>/stat`
/// (fields 14 and 15). `pid` "self" is this bench.
fn cpu_ticks(pid: &str) -> u64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {path} for CPU time: {err}"));
    // Field 2 (the command name, in parentheses) may contain spaces; count
    // from after its closing parenthesis, where field 3 starts.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{path} has no ')' after the command name"));
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{path}: field {n} is not a tick count"))
    };
    field(14) + field(15)
}

/// Busy ticks of all CPUs together (the `cpu` line of `/proc/stat`: every
/// field but idle and iowait), to detect other load on the machine.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat")
        .unwrap_or_else(|err| panic!("cannot read /proc/stat for machine CPU time: {err}"));
    let fields: Vec<u64> = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .expect("/proc/stat has a total `cpu` line")
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().expect("/proc/stat cpu fields are tick counts"))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]; the
    // guest times are already inside user and nice.
    fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, ticks)| ticks)
        .sum()
}

/// CPU ticks of every process involved, at one moment.
#[derive(Clone, Copy)]
pub(crate) struct CpuSnapshot {
    /// The gateway process.
    pub(crate) gateway: u64,
    /// nginx (0 when it is not in the run).
    pub(crate) nginx: u64,
    /// Both sim processes.
    pub(crate) sim: u64,
    /// This bench (the load generator).
    pub(crate) client: u64,
    /// The whole machine's busy time (all CPUs, from `/proc/stat`), so CPU
    /// used by anything else during a run shows up instead of skewing it
    /// silently.
    pub(crate) machine: u64,
}

impl CpuSnapshot {
    /// Reads them all now.
    pub(crate) fn now(procs: &Processes) -> CpuSnapshot {
        let ticks = |pid: u32| cpu_ticks(&pid.to_string());
        CpuSnapshot {
            gateway: ticks(procs.gateway.pid),
            nginx: procs.nginx.as_ref().map_or(0, |n| ticks(n.process.pid)),
            sim: ticks(procs.sim.pid) + ticks(procs.slow_sim.pid),
            client: cpu_ticks("self"),
            machine: machine_busy_ticks(),
        }
    }

    /// Ticks spent since `earlier`.
    pub(crate) fn since(self, earlier: CpuSnapshot) -> CpuSnapshot {
        CpuSnapshot {
            gateway: self.gateway.saturating_sub(earlier.gateway),
            nginx: self.nginx.saturating_sub(earlier.nginx),
            sim: self.sim.saturating_sub(earlier.sim),
            client: self.client.saturating_sub(earlier.client),
            machine: self.machine.saturating_sub(earlier.machine),
        }
    }

    /// Ticks the machine was busy with something other than the processes
    /// measured.
    pub(crate) fn background(self) -> u64 {
        self.machine
            .saturating_sub(self.gateway + self.nginx + self.sim + self.client)
    }

    /// Sum of two spans, for merging rounds.
    pub(crate) fn plus(self, other: CpuSnapshot) -> CpuSnapshot {
        CpuSnapshot {
            gateway: self.gateway + other.gateway,
            nginx: self.nginx + other.nginx,
            sim: self.sim + other.sim,
            client: self.client + other.client,
            machine: self.machine + other.machine,
        }
    }
}

/// `getconf CLK_TCK`: the unit of utime/stime in `/proc/<pid>/stat`; 100 (the
/// Linux default) when it cannot be asked.
pub(crate) fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}
