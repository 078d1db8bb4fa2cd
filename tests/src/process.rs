//! Running the project's real binaries from tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built next to the test executable (`target/<profile>/`).
/// The README's test command builds them before running the tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    // Tests run from target/<profile>/deps/, the demo from target/<profile>/.
    let dir = exe.parent().expect("executable directory");
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (`make test` does)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (bound, then released for the process under test).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A child process that is killed when dropped; its stderr and stdout go to a log file.
pub struct Running {
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Running {
    pub fn spawn(mut command: Command) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for logs");
        let log = dir.path().join("output.log");
        let file = std::fs::File::create(&log).expect("log file");
        let stdout = file.try_clone().expect("log file handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `limit` for the process to exit; `None` if it is still running.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (e.g. "TERM") to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- output of {:?} ----\n{}",
                self.child.id(),
                self.output()
            );
        }
    }
}

/// Polls `check` until it is true or `limit` passes.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check()
}

/// Polls the async `check` until it is true or `limit` passes.
pub async fn eventually_async<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    check().await
}

/// Runs `future` to completion on a thread and runtime of its own, from sync code that
/// may itself run inside a test's runtime (where blocking on a future would panic).
/// `Err` when that thread panicked or no runtime could be built.
pub fn block_on_own_thread<T: Send>(
    future: impl std::future::Future<Output = T> + Send,
) -> Result<T, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|runtime| runtime.block_on(future))
                    .map_err(|e| e.to_string())
            })
            .join()
            .map_err(|_| "the thread panicked".to_string())?
    })
}

/// Where a tool module's build script (`tests/control-plane/build.sh`,
/// `tests/tools/build.sh`) puts its binaries (its `--print`), checked to hold `binaries`;
/// the error names the make target that builds them.
pub fn built_tools(script: &str, binaries: &[&str], make_target: &str) -> Result<PathBuf, String> {
    let script = crate::workspace_root().join(script);
    let output = Command::new("bash")
        .arg(&script)
        .arg("--print")
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    for binary in binaries {
        if !dir.join(binary).exists() {
            return Err(format!(
                "{} is missing: build it first with `make {make_target}` (`make test` does)",
                dir.join(binary).display()
            ));
        }
    }
    Ok(dir)
}
