//! The reference on the command line: the subcommands other than `serve`'s happy path — `check`,
//! `hash-key`, `new-key`, `--help`, and `serve` refusing a bad keys file.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use sha2::Digest;

use super::harness::{free_port_pair, poll_until, scopegate_bin, ProxyBuilder};

/// What a finished `scopegate` run printed; Debug shows all of it, so an
/// assertion message carrying it explains a failure (ripgrep style).
struct Run {
    command: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\n$ {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `scopegate args…` in `dir` with `stdin`; kills it after 20 s.
fn scopegate(dir: &Path, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(scopegate_bin());
    command
        .args(args)
        .current_dir(dir)
        .env_remove("SCOPEGATE_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn scopegate");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut status = None;
    let exited = poll_until(Duration::from_secs(20), || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        status = Some(child.wait().unwrap());
    }
    writer.join().unwrap();
    let run = Run {
        command: format!("scopegate {}", args.join(" ")),
        status: status.unwrap(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(exited, "scopegate did not exit within 20 s: {run:?}");
    run
}

/// A valid config + keys pair in a fresh temp dir.
fn valid_config() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .write_files(dir.path(), free_port_pair());
    (dir, config.to_str().unwrap().to_string())
}

/// Keys file with a duplicate key id (line 13) and a scope typo (line 18).
fn broken_keys() -> String {
    let h = |s: &str| scopegate::identity::keys::digest_hex(s.as_bytes());
    format!(
        r#"organisations:
  - id: org_acme
    workspaces:
      - id: ws_research
keys:
  - id: key_a
    name: A
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: ["completions.write"]
  # the same id again
  - id: key_a
    name: A again
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: ["completions.wrte"]
"#,
        h("one"),
        h("two")
    )
}

/// `FILE:LINE:COL: message` lines for `file_name` (e.g. `keys.yaml`).
fn positioned(stderr: &str, file_name: &str) -> Vec<(u32, u32, String)> {
    let marker = format!("{file_name}:");
    stderr
        .lines()
        .filter_map(|line| {
            let at = line.find(&marker)?;
            let mut rest = line[at + marker.len()..].splitn(3, ':');
            let line_no = rest.next()?.parse().ok()?;
            let col = rest.next()?.parse().ok()?;
            let message = rest.next()?.strip_prefix(' ')?.to_string();
            Some((line_no, col, message))
        })
        .collect()
}

#[test]
fn check_valid_config_exits_0_with_one_summary_line() {
    let (dir, config) = valid_config();

    let run = scopegate(dir.path(), &["check", "--config", &config], b"", &[]);

    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(run.stdout.trim_end().lines().count(), 1, "{run:?}");
    assert!(!run.stdout.trim().is_empty(), "{run:?}");
}

#[test]
fn check_reads_the_config_path_from_scopegate_config() {
    let (dir, config) = valid_config();

    let run = scopegate(
        dir.path(),
        &["check"],
        b"",
        &[("SCOPEGATE_CONFIG", &config)],
    );

    assert_eq!(run.status.code(), Some(0), "{run:?}");
}

#[test]
fn check_lists_every_keys_problem_with_its_position() {
    let (dir, config) = valid_config();
    std::fs::write(dir.path().join("keys.yaml"), broken_keys()).unwrap();

    let run = scopegate(dir.path(), &["check", "--config", &config], b"", &[]);

    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let problems = positioned(&run.stderr, "keys.yaml");
    assert!(
        problems.len() >= 2,
        "expected two positioned problems: {run:?}"
    );
    assert!(
        problems
            .iter()
            .all(|(line, col, _)| *line >= 1 && *col >= 1),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|(line, _, message)| *line == 13 && message.contains("key_a")),
        "no duplicate-id problem at line 13: {problems:?}"
    );
    assert!(
        problems.iter().any(|(line, _, message)| *line == 18
            && message.contains("completions.wrte")
            && message.contains("completions.write")),
        "no scope typo at line 18 naming completions.write: {problems:?}"
    );
}

#[test]
fn check_refuses_unknown_config_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .config("max_inspect_bytes: 1024")
        .write_files(dir.path(), free_port_pair());

    let run = scopegate(
        dir.path(),
        &["check", "--config", config.to_str().unwrap()],
        b"",
        &[],
    );

    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("max_inspect_bytes"), "{run:?}");
    assert!(
        !positioned(&run.stderr, "scopegate.yaml").is_empty(),
        "{run:?}"
    );
}

#[test]
fn check_names_an_unset_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProxyBuilder::new("http://127.0.0.1:9", "http://127.0.0.1:9")
        .completions_yaml("set_headers: {authorization: \"Bearer ${SG_E2E_SURELY_UNSET}\"}")
        .write_files(dir.path(), free_port_pair());

    let run = scopegate(
        dir.path(),
        &["check", "--config", config.to_str().unwrap()],
        b"",
        &[],
    );

    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stderr.contains("SG_E2E_SURELY_UNSET"), "{run:?}");
}

#[test]
fn serve_with_an_invalid_keys_file_exits_non_zero() {
    let (dir, config) = valid_config();
    std::fs::write(dir.path().join("keys.yaml"), broken_keys()).unwrap();

    let run = scopegate(dir.path(), &["serve", "--config", &config], b"", &[]);

    assert!(!run.status.success(), "{run:?}");
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(output.contains("keys.yaml"), "{run:?}");
    assert!(output.contains("completions.wrte"), "{run:?}");
}

#[test]
fn hash_key_ignores_the_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let expected = hex::encode(sha2::Sha256::digest(b"sk-some secret"));

    let with_newline = scopegate(dir.path(), &["hash-key"], b"sk-some secret\n", &[]);
    let without = scopegate(dir.path(), &["hash-key"], b"sk-some secret", &[]);

    assert_eq!(with_newline.status.code(), Some(0), "{with_newline:?}");
    assert_eq!(without.status.code(), Some(0), "{without:?}");
    assert_eq!(with_newline.stdout.trim_end(), expected, "{with_newline:?}");
    assert_eq!(without.stdout.trim_end(), expected, "{without:?}");
    assert_eq!(
        expected,
        scopegate::identity::keys::digest_hex(b"sk-some secret")
    );
}

#[test]
fn new_key_prints_the_secret_once_and_an_entry_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();

    let run = scopegate(
        dir.path(),
        &[
            "new-key",
            "--type",
            "workspace-service",
            "--name",
            "Bot",
            "--workspace",
            "ws_research",
            "--scopes",
            "completions.write,logs.view",
        ],
        b"",
        &[],
    );

    assert_eq!(run.status.code(), Some(0), "{run:?}");
    let secret = run
        .stderr
        .split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .find(|word| word.starts_with("sgk-"))
        .unwrap_or_else(|| panic!("no sgk- secret on stderr: {run:?}"));
    // 256 bits need at least 43 base64url characters (64 in hex).
    assert!(secret.len() >= 4 + 43, "secret too short: {secret}");
    assert!(
        !run.stdout.contains(secret),
        "the secret is on stdout: {run:?}"
    );
    assert!(
        run.stdout
            .contains(&scopegate::identity::keys::digest_hex(secret.as_bytes())),
        "stdout entry does not hold the secret's hash: {run:?}"
    );
    assert!(run.stdout.contains("completions.write"), "{run:?}");
}

#[test]
fn every_subcommand_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["serve", "check", "hash-key", "new-key", "demo"] {
        let run = scopegate(dir.path(), &[sub, "--help"], b"", &[]);
        assert_eq!(run.status.code(), Some(0), "{run:?}");
        assert!(run.stdout.contains("Usage"), "{run:?}");
    }
    let top = scopegate(dir.path(), &["--help"], b"", &[]);
    assert_eq!(top.status.code(), Some(0), "{top:?}");
    for sub in ["serve", "check", "hash-key", "new-key", "demo"] {
        assert!(
            top.stdout.contains(sub),
            "{sub} missing from --help: {top:?}"
        );
    }
}
