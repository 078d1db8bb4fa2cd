//! A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver and
//! kube-controller-manager built from their Go modules by `tests/control-plane/build.sh`
//! (`make control-plane`), started once per test binary (or demo) and killed with it.
//!
//! Real authentication (client certificates from a test CA, ServiceAccount tokens signed
//! by the API server), RBAC, the default admission plugins (ServiceAccount,
//! ValidatingAdmissionPolicy, the webhooks), and an audit log of every request. No
//! scheduler and no kubelet run: `kubelet.rs` plays the kubelet's part. The node lifecycle
//! controller is off, since no kubelet sends heartbeats for the harness's nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::pki::{Issued, TestCa};
use crate::process::free_port;

/// The API server's ServiceAccount token issuer.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What a started control plane offers the tests: its URL, its CA, an admin identity,
/// and where its logs are.
pub struct ControlPlane {
    pub url: String,
    pub port: u16,
    pub dir: PathBuf,
    pub ca_pem: String,
    pub admin: Issued,
    /// A kubeconfig with the admin identity (`system:masters`), for kubectl.
    pub admin_kubeconfig: PathBuf,
    pub audit_log: PathBuf,
    pub versions: Versions,
    /// The directory with the built binaries (kubectl among them).
    pub bin: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Versions {
    pub kubernetes: String,
    pub etcd: String,
    pub controller_manager: String,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane of this process, started on first use. Panics with the reason (and
/// the components' logs) when it cannot start.
pub fn control_plane() -> &'static ControlPlane {
    match CONTROL_PLANE.get_or_init(|| {
        start(true, &mut |command, log| {
            spawn_for_process_life(command, log)
        })
    }) {
        Ok(plane) => plane,
        Err(error) => panic!("the control plane did not start: {error}"),
    }
}

type SpawnRequest = (Command, PathBuf, mpsc::Sender<Result<u32, String>>);
static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

/// Starts `command` for the life of this process (the control plane, the installed
/// webhook), its output to `log`; returns its pid. The processes are started, and their
/// `Child` handles kept, by one thread that lives as long as the process: each gets
/// SIGKILL when that thread ends, that is when the test binary exits, however it exits.
pub fn spawn_for_process_life(command: Command, log: &Path) -> Result<u32, String> {
    let keeper = KEEPER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("process-keeper".into())
            .spawn(move || {
                // The sender lives in a static: this loop (and the children it keeps)
                // ends only with the process.
                let mut children = Vec::new();
                while let Ok((command, log, reply)) = receiver.recv() {
                    let child = spawn(command, &log);
                    let _ = reply.send(child.as_ref().map(Child::id).map_err(Clone::clone));
                    children.extend(child);
                }
            })
            .expect("the process keeper thread starts");
        Mutex::new(sender)
    });
    let (reply, answer) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, log.to_path_buf(), reply))
        .map_err(|e| e.to_string())?;
    answer.recv().map_err(|e| e.to_string())?
}

/// Whether process `pid` still runs (it is a child of the keeper thread: a zombie after it
/// exits, which `/proc` shows as state Z).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Where `tests/control-plane/build.sh` puts the binaries.
pub fn binaries_dir() -> Result<PathBuf, String> {
    crate::process::built_tools(
        "tests/control-plane/build.sh",
        &[
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
        ],
        "control-plane",
    )
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A kubeconfig for `server` trusting `ca_pem`, with either a client certificate or a
/// bearer token.
pub fn kubeconfig(server: &str, ca_pem: &str, user: KubeconfigUser<'_>) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match user {
        KubeconfigUser::Certificate(issued) => format!(
            "client-certificate-data: {}\n    client-key-data: {}",
            b64(&issued.cert_pem),
            b64(&issued.key_pem)
        ),
        KubeconfigUser::Token(token) => format!("token: {token}"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: test\n  user:\n    {user}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\ncurrent-context: test\n",
        b64(ca_pem)
    )
}

pub enum KubeconfigUser<'a> {
    Certificate(&'a Issued),
    Token(&'a str),
}

/// Spawns `command` with its output to `log`, to be killed when the spawning thread ends.
fn spawn(mut command: Command, log: &Path) -> Result<Child, String> {
    // Appended: a process started again (the webhook after an outage) keeps the first log.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let stdout = file.try_clone().map_err(|e| e.to_string())?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(file);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits for `ready` (an `Ok` answer) while `child` runs, up to `limit`.
fn wait_until(
    what: &str,
    pid: u32,
    log: &Path,
    limit: Duration,
    mut ready: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match ready() {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if !alive(pid) {
            return Err(format!("{what} exited:\n{}", tail(log)));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} not ready within {limit:?} ({last}):\n{}",
                tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn kubectl(bin: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(bin.join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// Every request at `Metadata` level: who did what to which resource, and the answer.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n";

const DIR_PREFIX: &str = "pod-reloaded-control-plane-";

/// Removes the directories (etcd's data, logs) of control planes whose process ended.
fn remove_dirs_of_ended_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let pid = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Starts etcd, kube-apiserver and (`with_controllers`) kube-controller-manager, each
/// through `spawn` (which returns its pid). The ports are free when chosen, but another
/// test may take one before a component binds it: then it starts again on new ports.
pub fn start(
    with_controllers: bool,
    spawn: &mut dyn FnMut(Command, &Path) -> Result<u32, String>,
) -> Result<ControlPlane, String> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start_once(with_controllers, spawn) {
            Err(error) if attempt < 4 && error.contains("address already in use") => {
                eprintln!(
                    "control plane: a port was taken meanwhile; starting again on other ports"
                );
            }
            result => return result,
        }
    }
}

fn start_once(
    with_controllers: bool,
    spawn: &mut dyn FnMut(Command, &Path) -> Result<u32, String>,
) -> Result<ControlPlane, String> {
    let bin = binaries_dir()?;
    // Kept after the process (the logs stay readable after a failure) until a later run
    // finds its process gone and removes it: the name carries the pid.
    remove_dirs_of_ended_runs();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let path = |name: &str| dir.join(name);

    let ca = TestCa::new("pod-reloaded test cluster CA");
    let serving = ca.server(&["127.0.0.1", "localhost", "kubernetes.default.svc"]);
    let admin = ca.client("pod-reloaded-test-admin", &["system:masters"]);
    let service_account_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    write(&path("ca.crt"), &ca.cert_pem())?;
    write(&path("apiserver.crt"), &serving.cert_pem)?;
    write(&path("apiserver.key"), &serving.key_pem)?;
    write(
        &path("service-account.key"),
        &service_account_key.serialize_pem(),
    )?;
    write(
        &path("service-account.pub"),
        &service_account_key.public_key_pem(),
    )?;
    write(&path("audit-policy.yaml"), AUDIT_POLICY)?;

    let etcd_port = free_port();
    let etcd_peer_port = free_port();
    let port = free_port();
    let controller_manager_port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let admin_kubeconfig = path("admin.kubeconfig");
    write(
        &admin_kubeconfig,
        &kubeconfig(&url, &ca.cert_pem(), KubeconfigUser::Certificate(&admin)),
    )?;

    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
    let mut etcd = Command::new(bin.join("etcd"));
    etcd.arg("--name=test")
        .arg(format!("--data-dir={}", path("etcd").display()))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=test={peer_url}"))
        .arg("--unsafe-no-fsync=true")
        .arg("--log-level=warn");
    let etcd_log = path("etcd.log");
    let etcd_pid = spawn(etcd, &etcd_log)?;
    let etcd_version_url = format!("{etcd_url}/version");
    let mut etcd_version = String::new();
    wait_until("etcd", etcd_pid, &etcd_log, Duration::from_secs(60), || {
        let body = crate::webhook::http_get(etcd_port, "/version")
            .map_err(|e| format!("{etcd_version_url}: {e}"))?
            .1;
        let version: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        etcd_version = format!("v{}", version["etcdserver"].as_str().unwrap_or("?"));
        Ok(())
    })?;

    let mut apiserver = Command::new(bin.join("kube-apiserver"));
    apiserver
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={port}"))
        // Must not be loopback; never connected to: with no endpoint reconciler it is
        // written nowhere (a documentation address, TEST-NET-2).
        .arg("--advertise-address=198.51.100.1")
        .arg("--endpoint-reconciler-type=none")
        .arg(format!("--cert-dir={}", path("apiserver-certs").display()))
        .arg(format!(
            "--tls-cert-file={}",
            path("apiserver.crt").display()
        ))
        .arg(format!(
            "--tls-private-key-file={}",
            path("apiserver.key").display()
        ))
        .arg(format!("--client-ca-file={}", path("ca.crt").display()))
        .arg("--authorization-mode=RBAC")
        .arg(format!("--service-account-issuer={ISSUER}"))
        .arg(format!(
            "--service-account-key-file={}",
            path("service-account.pub").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            path("service-account.key").display()
        ))
        .arg("--service-cluster-ip-range=10.96.0.0/24")
        .arg("--allow-privileged=true")
        .arg(format!(
            "--audit-policy-file={}",
            path("audit-policy.yaml").display()
        ))
        .arg(format!("--audit-log-path={}", path("audit.log").display()))
        .arg("--audit-log-mode=blocking")
        .arg("--v=1");
    let apiserver_log = path("kube-apiserver.log");
    let apiserver_pid = spawn(apiserver, &apiserver_log)?;
    wait_until(
        "kube-apiserver",
        apiserver_pid,
        &apiserver_log,
        Duration::from_secs(120),
        || kubectl(&bin, &admin_kubeconfig, &["get", "--raw", "/readyz"]).map(drop),
    )?;
    let version: serde_json::Value = serde_json::from_str(&kubectl(
        &bin,
        &admin_kubeconfig,
        &["get", "--raw", "/version"],
    )?)
    .map_err(|e| e.to_string())?;
    let kubernetes = version["gitVersion"].as_str().unwrap_or("?").to_string();

    let controller_manager_version = if with_controllers {
        let mut controller_manager = Command::new(bin.join("kube-controller-manager"));
        controller_manager
            .arg(format!("--kubeconfig={}", admin_kubeconfig.display()))
            .arg("--leader-elect=false")
            .arg("--controllers=*,-nodelifecycle")
            .arg(format!("--root-ca-file={}", path("ca.crt").display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                path("service-account.key").display()
            ))
            .arg("--use-service-account-credentials=true")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={controller_manager_port}"))
            .arg(format!(
                "--cert-dir={}",
                path("controller-manager-certs").display()
            ))
            .arg("--v=1");
        let controller_manager_log = path("kube-controller-manager.log");
        let controller_manager_pid = spawn(controller_manager, &controller_manager_log)?;
        // Up when its ServiceAccount controller made the `default` account of `default`.
        wait_until(
            "kube-controller-manager",
            controller_manager_pid,
            &controller_manager_log,
            Duration::from_secs(120),
            || {
                kubectl(
                    &bin,
                    &admin_kubeconfig,
                    &["get", "serviceaccount", "default", "-n", "default"],
                )
                .map(drop)
            },
        )?;
        Command::new(bin.join("kube-controller-manager"))
            .arg("--version")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .trim_start_matches("Kubernetes ")
                    .to_string()
            })
            .map_err(|e| e.to_string())?
    } else {
        "not started".to_string()
    };
    let versions = Versions {
        kubernetes,
        etcd: etcd_version,
        controller_manager: controller_manager_version,
    };
    eprintln!(
        "control plane: kube-apiserver {}, etcd {}, kube-controller-manager {} on 127.0.0.1:{port} (logs and kubeconfig in {})",
        versions.kubernetes,
        versions.etcd,
        versions.controller_manager,
        dir.display()
    );
    Ok(ControlPlane {
        url,
        port,
        dir: dir.clone(),
        ca_pem: ca.cert_pem(),
        admin,
        admin_kubeconfig,
        audit_log: path("audit.log"),
        versions,
        bin,
    })
}

impl ControlPlane {
    /// The last lines of each component's log, for a failing test to print.
    pub fn logs(&self) -> String {
        [
            "etcd.log",
            "kube-apiserver.log",
            "kube-controller-manager.log",
        ]
        .iter()
        .map(|name| format!("---- {name} ----\n{}", tail(&self.dir.join(name))))
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// Runs the built kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        kubectl(&self.bin, &self.admin_kubeconfig, args)
    }

    /// The audit log's events (one JSON object a line).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}
