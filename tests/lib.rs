//! Helpers for black-box tests: find the built binaries, start them, read what they print, stop
//! them with real signals.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use raftmq_testkit::binary;

/// A started process whose stdout and stderr lines are collected.
pub struct Process {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    pub fn start(name: &str, args: &[&str]) -> Process {
        let mut child = Command::new(binary(name))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for stream in [Box::new(out) as Box<dyn std::io::Read + Send>, Box::new(err)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a printed line containing `needle`, returning it; panics with everything printed
    /// so far after `deadline`.
    pub fn wait_for_line(&mut self, needle: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line with {needle:?} within {deadline:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`, `STOP`, `CONT`) with the system's `kill`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, failing after `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < end, "process did not exit within {deadline:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything printed until the process exited (call after `wait_exit`).
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A cluster started by the real `scripts/cluster.sh` from a generated config directory with
/// free ports, its data and logs in a temporary directory. Dropping it runs `down --purge`.
pub struct ScriptCluster {
    pub home: tempfile::TempDir,
    pub config: PathBuf,
    pub namesrv: Vec<String>,
    pub groups: Vec<String>,
    /// Environment of every script run (and so of every node it starts).
    env: Vec<(String, String)>,
}

/// How [`ScriptCluster::start`] starts a cluster.
#[derive(Default)]
pub struct ScriptOptions<'a> {
    /// Extra top-level keys in every broker's config.
    pub broker_extra: &'a str,
    /// Extra flags of `cluster.sh up` (e.g. `--lazyfs`).
    pub up_flags: &'a [&'a str],
    /// Extra environment of the script and the nodes.
    pub env: &'a [(&'a str, &'a str)],
}

/// A port free on the host now, and never handed out before by this test process. In a
/// `--netns` cluster the nodes listen in their namespaces, so a port one of them holds looks free
/// on the host; the cluster script tells nodes apart by port when it rewrites addresses, so two
/// nodes of one cluster must never get the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

/// The NameServers as a TOML list: `"a:1", "b:2"`.
pub fn toml_list(namesrv: &[String]) -> String {
    namesrv
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The config files of a new group of three brokers on free ports of 127.0.0.1: (node id, text),
/// each with `broker_extra` first.
pub fn group_configs(group: &str, namesrv: &[String], broker_extra: &str) -> Vec<(u64, String)> {
    let list = toml_list(namesrv);
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, (c, r))| {
            format!(
                "[[members]]\nnode-id = {}\nraft-addr = \"127.0.0.1:{r}\"\nclient-addr = \"127.0.0.1:{c}\"\n\n",
                i + 1
            )
        })
        .collect();
    (1..=3)
        .map(|node| {
            let metrics = free_port();
            let text = format!("{broker_extra}\ngroup = \"{group}\"\nnode-id = {node}\nnamesrv = [{list}]\nnamesrv-heartbeat-ms = 500\nmetrics-addr = \"127.0.0.1:{metrics}\"\n\n{members}");
            (node, text)
        })
        .collect()
}

impl ScriptCluster {
    /// Writes configs for `namesrvs` NameServers and the named groups of 3 nodes, then `up`.
    pub fn up(namesrvs: usize, groups: &[&str]) -> ScriptCluster {
        Self::up_with(namesrvs, groups, "")
    }

    /// As [`ScriptCluster::up`], with extra top-level keys in every broker's config.
    ///
    /// Free ports are picked by binding and releasing them, so another process (a client's
    /// outgoing connection among them) may take one before the node binds it: when the script
    /// says a port is in use, the cluster is torn down and started again on new ports.
    pub fn up_with(namesrvs: usize, groups: &[&str], broker_extra: &str) -> ScriptCluster {
        Self::start(
            namesrvs,
            groups,
            &ScriptOptions {
                broker_extra,
                ..Default::default()
            },
        )
    }

    /// As [`ScriptCluster::up`], with the options.
    pub fn start(namesrvs: usize, groups: &[&str], options: &ScriptOptions) -> ScriptCluster {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_up(namesrvs, groups, options) {
                Ok(cluster) => return cluster,
                Err(why) if attempt < 4 && why.contains("in use") => {
                    eprintln!("cluster.sh up: a port was taken meanwhile; again on new ports:\n{why}");
                }
                Err(why) => panic!("cluster.sh up failed:\n{why}"),
            }
        }
    }

    fn try_up(namesrvs: usize, groups: &[&str], options: &ScriptOptions) -> Result<ScriptCluster, String> {
        let broker_extra = options.broker_extra;
        let home = tempfile::tempdir().expect("temp dir");
        let config = home.path().join("config");
        std::fs::create_dir_all(&config).expect("config dir");
        let namesrv: Vec<String> = (0..namesrvs).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        for (i, addr) in namesrv.iter().enumerate() {
            std::fs::write(
                config.join(format!("namesrv-{}.toml", i + 1)),
                format!("listen = \"{addr}\"\nmetrics-addr = \"127.0.0.1:{}\"\n", free_port()),
            )
            .expect("write");
        }
        for group in groups {
            for (node, text) in group_configs(group, &namesrv, broker_extra) {
                std::fs::write(config.join(format!("{group}-{node}.toml")), text).expect("write");
            }
        }
        let cluster = ScriptCluster {
            home,
            config,
            namesrv,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            env: options
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut up = vec!["up"];
        up.extend_from_slice(options.up_flags);
        up.push(cluster.config.to_str().expect("utf-8 path"));
        let out = cluster.script(&up);
        if out.status.success() {
            let mut cluster = cluster;
            if options.up_flags.contains(&"--netns") {
                // The nodes listen on their namespaces' addresses now: the NameServers' too.
                let run = cluster.home.path().join("run");
                let dir = std::fs::read_to_string(run.join("config-dir")).expect("config-dir");
                cluster.namesrv = (1..=namesrvs)
                    .map(|i| {
                        let text = std::fs::read_to_string(PathBuf::from(dir.trim()).join(format!("namesrv-{i}.toml")))
                            .expect("rewritten NameServer config");
                        let listen = text.lines().find_map(|l| l.strip_prefix("listen = ")).expect("listen");
                        listen.trim().trim_matches('"').to_owned()
                    })
                    .collect();
            }
            Ok(cluster)
        } else {
            // Dropping the cluster runs `down --purge`.
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Runs `scripts/cluster.sh` with this cluster's environment.
    pub fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new(repo_root().join("scripts/cluster.sh"))
            .args(args)
            .env("RAFTMQ_HOME", self.home.path().join("run"))
            .env("RAFTMQ_BIN_DIR", binary("raftmq").parent().expect("bin dir"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run cluster.sh")
    }

    /// Runs the script and fails the test when it fails.
    pub fn must(&self, args: &[&str]) -> String {
        let out = self.script(args);
        assert!(
            out.status.success(),
            "cluster.sh {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn namesrv_list(&self) -> String {
        self.namesrv.join(",")
    }

    /// Runs `raftmq --namesrv <all> ARGS` (with this cluster's script environment, for
    /// `raftmq drill`) and returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut command = Command::new(binary("raftmq"));
        command
            .arg("--namesrv")
            .arg(self.namesrv_list())
            .args(args)
            .env("RAFTMQ_HOME", self.home.path().join("run"))
            .env("RAFTMQ_BIN_DIR", binary("raftmq").parent().expect("bin dir"));
        // A `--secure` cluster: sign as its admin, trust its CA.
        if let Some(admin) = self.admin_credentials() {
            command.env("RAFTMQ_CREDENTIALS", admin);
        }
        if let Some(ca) = self.tls_ca() {
            command.env("RAFTMQ_TLS_CA", ca);
        }
        let out = command.output().expect("run raftmq");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl ScriptCluster {
    /// The admin credentials file of a cluster started with `--secure`.
    pub fn admin_credentials(&self) -> Option<PathBuf> {
        let path = self.home.path().join("run/secrets/admin.toml");
        path.exists().then_some(path)
    }

    /// The CA of a cluster started with `--secure` (its ports serve TLS).
    pub fn tls_ca(&self) -> Option<PathBuf> {
        let path = self.home.path().join("run/secrets/ca.pem");
        path.exists().then_some(path)
    }
}

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        let _ = self.script(&["down", "--purge"]);
    }
}

impl ScriptCluster {
    /// A failed test's node logs: the end of each printed (the test's output shows it, in CI
    /// too), and the whole logs copied out of the cluster's home, which `down --purge` deletes.
    fn keep_logs(&self) {
        let logs = self.home.path().join("run/logs");
        let kept = std::env::temp_dir().join(format!(
            "raftmq-failed-{}-{}",
            std::process::id(),
            self.home
                .path()
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("cluster")
        ));
        let _ = std::fs::create_dir_all(&kept);
        let Ok(entries) = std::fs::read_dir(&logs) else {
            return;
        };
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for path in names {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let name = path.file_name().expect("a file name");
            let _ = std::fs::write(kept.join(name), &text);
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- the last lines of {} ----", name.to_string_lossy());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
        eprintln!("---- the whole logs are in {} ----", kept.display());
    }
}

/// A broker group as the NameServers report it, if they know it (and answer).
pub async fn group_info(admin: &raftmq_client::Admin, group: &str) -> Option<raftmq_proto::GroupInfo> {
    admin.group(group).await.ok().flatten()
}

/// The cluster script, for tools that drive it themselves (`raftmq chaos`, `raftmq drill`).
pub fn cluster_script() -> PathBuf {
    repo_root().join("scripts/cluster.sh")
}

/// A new seed every run, printed by whoever uses it so a failure can be replayed.
pub fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1
}
