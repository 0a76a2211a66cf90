//! Running model-written Python: a fresh temp dir, an empty environment, resource limits,
//! and its own process group, so a timeout (or a leftover child) is killed as a whole.
//! This keeps honest mistakes (endless loops, huge files or allocations) contained; it is
//! not a security boundary against hostile code (no network or filesystem isolation).
use crate::eval::humaneval::{program, Problem};
use crate::{Error, Result};
use std::path::PathBuf;
use std::time::Duration;

/// What running a program came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exited with status 0.
    Passed,
    /// Exited otherwise (an assertion, an exception, a limit); the end of its stderr.
    Failed { stderr_tail: String },
    /// Ran past the timeout (or its CPU limit) and was killed.
    TimedOut,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
}

/// Address space of the program: room for Python and modest data, not for runaway lists.
pub const MEMORY_LIMIT: u64 = 2 << 30;
/// Largest file the program may write.
pub const FILE_SIZE_LIMIT: u64 = 16 << 20;
/// Open file descriptors.
pub const OPEN_FILES_LIMIT: u64 = 64;
/// How much of stderr a failure keeps.
const STDERR_TAIL: usize = 2048;

/// Test `answer` on `problem`: `run_python(program(problem, answer))`.
pub fn check(problem: &Problem, answer: &str, timeout: Duration) -> Result<Outcome> {
    run_python(&program(problem, answer), timeout)
}

/// Run `program` with `python3 -I` in a fresh temporary working directory, with stdin
/// empty, stdout discarded, an environment of only `PATH` and `HOME` (the temp dir),
/// limits on memory, CPU time, file size and open files, and no core dumps. After
/// `timeout` of wall time its whole process group is killed; so is anything the program
/// left running when it exits.
#[cfg(unix)]
pub fn run_python(program: &str, timeout: Duration) -> Result<Outcome> {
    imp::run(&python()?, program, timeout)
}

#[cfg(not(unix))]
pub fn run_python(_program: &str, _timeout: Duration) -> Result<Outcome> {
    Err(Error::InvalidInput("running generated Python needs a Unix system (Linux or macOS)".into()))
}

/// The real interpreter behind `python3` on PATH, resolved once: version-manager shims
/// (pyenv) are scripts that need the environment the sandbox clears, and cost a
/// process per run.
fn python() -> Result<PathBuf> {
    static PYTHON: std::sync::OnceLock<std::result::Result<PathBuf, String>> = std::sync::OnceLock::new();
    PYTHON.get_or_init(resolve_python).clone().map_err(Error::InvalidInput)
}

fn resolve_python() -> std::result::Result<PathBuf, String> {
    let missing = |why: String| format!("cannot run python3 ({why}): install Python 3 and put python3 on PATH to run the tests of generated code");
    let out = std::process::Command::new("python3")
        .args(["-I", "-c", "import sys; print(sys.executable)"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| missing(e.to_string()))?;
    if !out.status.success() {
        return Err(missing(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.as_os_str().is_empty() || !path.is_file() {
        return Err(missing(format!("it reports its executable as `{}`", path.display())));
    }
    Ok(path)
}

#[cfg(unix)]
mod imp {
    use super::*;
    use std::fs::{self, File};
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    pub(super) fn run(python: &Path, program: &str, timeout: Duration) -> Result<Outcome> {
        let dir = tempfile::Builder::new().prefix("hybrid-sandbox-").tempdir().map_err(|e| {
            Error::InvalidInput(format!("cannot create a temporary directory for the sandbox: {e}; check TMPDIR"))
        })?;
        let script = dir.path().join("program.py");
        fs::write(&script, program).map_err(|e| file_error(&script, e))?;
        // stderr goes to an unnamed file, not a pipe: nothing to drain while it runs, and a
        // grandchild holding the pipe open cannot make us wait.
        let mut stderr = tempfile::tempfile().map_err(|e| Error::InvalidInput(format!("cannot create a temporary file: {e}")))?;
        let stderr_for_child = stderr.try_clone()?;

        let cpu_seconds = timeout.as_secs_f64().ceil() as u64 + 1;
        let mut cmd = Command::new(python);
        cmd.arg("-I")
            .arg(&script)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()))
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr_for_child))
            .process_group(0);
        // SAFETY: the closure only calls getrlimit/setrlimit, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                set_limit(libc::RLIMIT_AS, MEMORY_LIMIT)?;
                set_limit(libc::RLIMIT_CPU, cpu_seconds)?;
                set_limit(libc::RLIMIT_FSIZE, FILE_SIZE_LIMIT)?;
                set_limit(libc::RLIMIT_NOFILE, OPEN_FILES_LIMIT)?;
                set_limit(libc::RLIMIT_CORE, 0)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::InvalidInput(format!("cannot start {} for the sandbox: {e}", python.display())))?;

        let timed_out = wait_until(&mut child, Instant::now() + timeout)?;
        // The process group id is the child's pid; it is still unreaped here, so the id
        // cannot have been reused by another process group.
        unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
        let status = child.wait()?;
        if timed_out || status.signal() == Some(libc::SIGXCPU) {
            return Ok(Outcome::TimedOut);
        }
        if status.success() {
            return Ok(Outcome::Passed);
        }
        let mut tail = read_tail(&mut stderr, STDERR_TAIL)?;
        if tail.is_empty() {
            tail = format!("python exited with {status} and printed nothing on stderr");
        }
        Ok(Outcome::Failed { stderr_tail: tail })
    }

    /// Lower a limit for this process, never above the current hard limit (an
    /// unprivileged process may not raise it).
    fn set_limit(resource: RlimitResource, value: u64) -> std::io::Result<()> {
        let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut value = value as libc::rlim_t;
        if current.rlim_max != libc::RLIM_INFINITY && current.rlim_max < value {
            value = current.rlim_max;
        }
        let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    type RlimitResource = libc::__rlimit_resource_t;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    type RlimitResource = libc::c_int;

    /// Poll until the child exits (left unreaped) or the deadline passes; true on timeout.
    fn wait_until(child: &mut Child, deadline: Instant) -> Result<bool> {
        let mut pause = Duration::from_millis(1);
        loop {
            if exited(child)? {
                return Ok(false);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(true);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Has the child exited? Linux: asked without reaping it (WNOWAIT), so its process
    /// group id stays reserved until we have killed the group.
    #[cfg(target_os = "linux")]
    fn exited(child: &mut Child) -> Result<bool> {
        loop {
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            let rc = unsafe { libc::waitid(libc::P_PID, child.id() as libc::id_t, &mut info, flags) };
            if rc == 0 {
                return Ok(unsafe { info.si_pid() } != 0);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
    }

    /// Elsewhere: `try_wait` reaps the child; killing its group afterwards is then
    /// best-effort.
    #[cfg(not(target_os = "linux"))]
    fn exited(child: &mut Child) -> Result<bool> {
        Ok(child.try_wait()?.is_some())
    }

    fn read_tail(file: &mut File, max: usize) -> Result<String> {
        let len = file.seek(SeekFrom::End(0))?;
        file.seek(SeekFrom::Start(len.saturating_sub(max as u64)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }

    fn file_error(path: &Path, e: std::io::Error) -> Error {
        Error::File { path: path.to_path_buf(), message: format!("cannot write the program to test: {e}") }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Instant;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn passing_and_failing_programs() {
        assert_eq!(run_python("assert 1 + 1 == 2\n", T).unwrap(), Outcome::Passed);
        match run_python("def f():\n    return 1\nassert f() == 2, 'f is wrong'\n", T).unwrap() {
            Outcome::Failed { stderr_tail } => assert!(stderr_tail.contains("AssertionError: f is wrong"), "{stderr_tail}"),
            other => panic!("{other:?}"),
        }
        match run_python("import sys; sys.exit(3)\n", T).unwrap() {
            Outcome::Failed { stderr_tail } => assert!(stderr_tail.contains("exit status: 3"), "{stderr_tail}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn environment_is_empty_and_cwd_is_private() {
        let program = "import os, sys\n\
            assert set(os.environ) <= {'PATH', 'HOME', 'LC_CTYPE'}, sorted(os.environ)\n\
            assert os.environ['HOME'] == os.getcwd()\n\
            assert os.listdir('.') == ['program.py'], os.listdir('.')\n\
            assert sys.stdin.read() == ''\n\
            assert sys.flags.isolated\n";
        assert_eq!(run_python(program, T).unwrap(), Outcome::Passed);
    }

    #[test]
    fn an_endless_loop_times_out_quickly() {
        let start = Instant::now();
        assert_eq!(run_python("while True:\n    pass\n", Duration::from_secs(1)).unwrap(), Outcome::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    }

    #[test]
    fn a_huge_file_or_allocation_fails() {
        let write = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * (1 << 20))\n";
        match run_python(write, T).unwrap() {
            Outcome::Failed { stderr_tail } => assert!(stderr_tail.contains("File too large"), "{stderr_tail}"),
            other => panic!("{other:?}"),
        }
        match run_python("x = bytearray(4 << 30)\n", T).unwrap() {
            Outcome::Failed { stderr_tail } => assert!(stderr_tail.contains("MemoryError"), "{stderr_tail}"),
            other => panic!("{other:?}"),
        }
    }

    /// A process is gone, or a zombie nobody reaped yet (PID 1 in a container may not).
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with(['Z', 'X'])),
            Err(_) => (unsafe { libc::kill(pid, 0) }) != 0,
        }
    }

    fn forked_child_is_killed(parent_tail: &str, timeout: Duration, expected: Outcome) {
        let out = tempfile::tempdir().unwrap();
        let pid_file = out.path().join("pid");
        let program = format!(
            "import os, time\n\
             pid = os.fork()\n\
             if pid == 0:\n    time.sleep(60)\n    os._exit(0)\n\
             open({:?}, 'w').write(str(pid))\n\
             {parent_tail}\n",
            pid_file.display().to_string()
        );
        assert_eq!(run_python(&program, timeout).unwrap(), expected);
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let start = Instant::now();
        while !is_dead(pid) {
            assert!(start.elapsed() < Duration::from_secs(2), "forked child {pid} is still running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_forked_child_does_not_outlive_a_timeout() {
        forked_child_is_killed("while True:\n    pass", Duration::from_secs(1), Outcome::TimedOut);
    }

    #[test]
    fn a_forked_child_does_not_outlive_its_parent() {
        forked_child_is_killed("", T, Outcome::Passed);
    }
}
