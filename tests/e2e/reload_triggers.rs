//! The reference on live reload, trigger by trigger: every way the keys file can change puts the
//! change in force within 2 s of the write, and a bad file changes nothing.
//!
//! Each test isolates one trigger:
//! - filesystem events: the content poll is set to ten minutes
//!   ([`POLL_OFF`]), so only an event on the keys folder can explain a
//!   reload;
//! - SIGHUP and the poll: `keys.yaml` is a symlink to a file in another
//!   folder, which the proxy does not watch (it watches only the keys
//!   file's own folder), and that target is rewritten in place, so no event
//!   reaches the watched folder.
//!
//! Latencies are measured from the write (the rename, for renames) to the
//! first request that sees the change, polling every [`TICK`]; they are
//! printed (`--nocapture` shows them) and must stay under the reference's 2 s.
//! Waits are polls with deadlines; the only fixed waits show that something
//! does NOT happen, are bounded, and say so where they are.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use scopegate::identity::keys::digest_hex;

use super::client::Conn;
use super::fixtures::*;
use super::harness::{expect_forwarded, expect_openai_error, poll_until, Proxy, Upstreams};

/// The reference on live reload: "A change is in force within 2 s of the write."
const RELOAD_BOUND: Duration = Duration::from_secs(2);
/// How long a measurement keeps polling, so a slow reload fails with its
/// actual latency instead of a bare timeout.
const GIVE_UP: Duration = Duration::from_secs(6);
/// Polling interval of the measurements.
const TICK: Duration = Duration::from_millis(10);
/// A content poll so slow it cannot be what picks a change up.
const POLL_OFF: &str = "reload_poll_interval_ms: 600000";

const SUCCESS: &[(&str, &str)] = &[("result", "success")];
const FAILURE: &[(&str, &str)] = &[("result", "failure")];
const RELOADS: &str = "scopegate_keys_reloads_total";

// ---------------------------------------------------------------- helpers

/// A workspace-service key on ws_research with `completions.write`.
fn key_entry(id: &str, secret: &str) -> String {
    format!(
        r#"  - id: {id}
    name: {id}
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: ["completions.write"]
"#,
        digest_hex(secret.as_bytes())
    )
}

fn works(proxy: &Proxy, secret: &str) -> bool {
    proxy.chat(secret).status == 200
}

/// Polls `condition` every [`TICK`]; the time from `since` until it first
/// held, or None after [`GIVE_UP`].
fn latency(since: Instant, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if condition() {
            return Some(since.elapsed());
        }
        if since.elapsed() > GIVE_UP {
            return None;
        }
        thread::sleep(TICK);
    }
}

/// Asserts that `condition` holds within the reference's 2 s of `since` (the
/// write); prints and returns the measured latency.
#[track_caller]
fn assert_in_force(trigger: &str, since: Instant, condition: impl FnMut() -> bool) -> Duration {
    let Some(took) = latency(since, condition) else {
        panic!("[{trigger}] the change is not in force {GIVE_UP:?} after the write");
    };
    eprintln!("reload latency [{trigger}]: {} ms", took.as_millis());
    assert!(
        took < RELOAD_BOUND,
        "[{trigger}] the change took {took:?} to be in force (the reference on live reload: within {RELOAD_BOUND:?})"
    );
    took
}

/// Checks for `window` (every [`TICK`]) that `condition` never holds: a
/// bounded wait to show that something does NOT happen.
#[track_caller]
fn assert_never(window: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < window {
        assert!(!condition(), "{what} after {:?}", start.elapsed());
        thread::sleep(TICK);
    }
}

/// Replaces `path` the way editors and config managers do: write a
/// sibling, then rename it over the original. Returns the instant of the
/// rename.
fn replace_atomically(path: &Path, text: &str) -> Instant {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    let at = Instant::now();
    std::fs::rename(&tmp, path).unwrap();
    at
}

/// Rewrites `path` in place: same inode, truncated, then written in one
/// go. Returns the instant the write started.
fn rewrite_in_place(path: &Path, text: &str) -> Instant {
    let at = Instant::now();
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.sync_all().unwrap();
    at
}

fn keys_dir(proxy: &Proxy) -> PathBuf {
    proxy.keys_path().parent().unwrap().to_path_buf()
}

/// Turns the proxy's `keys.yaml` into a symlink to `target` (made next to
/// it, then renamed over it, so the file never goes missing).
fn link_keys_to(proxy: &Proxy, target: &Path) {
    let tmp = keys_dir(proxy).join("keys.yaml.link");
    symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, proxy.keys_path()).unwrap();
}

/// The proxy's error-level log lines that name the keys file, once there
/// are at least `n` of them (or what there is after 2 s: the counter goes up
/// just before the line is written).
fn keys_errors_logged(proxy: &Proxy, n: usize) -> Vec<String> {
    let lines = || -> Vec<String> {
        proxy
            .logs()
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("keys.yaml"))
            .map(str::to_string)
            .collect()
    };
    poll_until(RELOAD_BOUND, || lines().len() >= n);
    lines()
}

fn successes(proxy: &Proxy) -> f64 {
    proxy.metric(RELOADS, SUCCESS)
}

fn failures(proxy: &Proxy) -> f64 {
    proxy.metric(RELOADS, FAILURE)
}

/// Makes `keys.yaml` a symlink to a file in a folder of its own (which the
/// proxy does not watch) holding the shared keys plus `key_linked`, and
/// waits until that version is in force. Returns the target's folder (keep
/// it alive) and the target path.
fn keys_via_unwatched_symlink(proxy: &Proxy) -> (tempfile::TempDir, PathBuf) {
    const LINKED: &str = "sk-test-linked";
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("keys.yaml");
    std::fs::write(&target, keys_yaml_with(&key_entry("key_linked", LINKED))).unwrap();
    let at = Instant::now();
    link_keys_to(proxy, &target);
    // Setup, not the measurement: the rename of the link is an event in
    // the watched folder (and the poll, when on, sees it too).
    let took =
        latency(at, || works(proxy, LINKED)).expect("the symlinked keys file was never loaded");
    eprintln!(
        "setup: symlinked keys file in force after {} ms",
        took.as_millis()
    );
    (outside, target)
}

// ------------------------------------------------------------------ tests

/// Trigger 1: an editor-style atomic rename over keys.yaml, poll off.
#[test]
fn atomic_rename_is_in_force_within_2s_without_polling() {
    const ADDED: &str = "sk-test-renamed-in";
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).config(POLL_OFF).start();
    expect_openai_error(&proxy.chat(ADDED), 401, "invalid_api_key");
    let inode = std::fs::metadata(proxy.keys_path()).unwrap().ino();

    let at = replace_atomically(
        &proxy.keys_path(),
        &keys_yaml_with(&key_entry("key_renamed_in", ADDED)),
    );

    assert_in_force("atomic rename", at, || works(&proxy, ADDED));
    assert_ne!(
        std::fs::metadata(proxy.keys_path()).unwrap().ino(),
        inode,
        "the rename did not replace the file"
    );
    let last = up.completions.requests().pop().unwrap();
    assert_eq!(last.header("x-scopegate-key-id"), Some("key_renamed_in"));
}

/// Trigger 2: keys.yaml truncated and rewritten in place (same inode),
/// poll off. The rewrite adds a key and revokes another; both land in the
/// same snapshot.
#[test]
fn in_place_rewrite_is_in_force_within_2s_without_polling() {
    const ADDED: &str = "sk-test-written-in";
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).config(POLL_OFF).start();
    expect_forwarded(&proxy.chat(ALICE));
    expect_openai_error(&proxy.chat(ADDED), 401, "invalid_api_key");
    let alice = r#"    user_id: usr_alice"#;
    let text = keys_yaml_with(&key_entry("key_written_in", ADDED)).replacen(
        alice,
        &format!("{alice}\n    status: revoked"),
        1,
    );
    assert!(
        text.contains("status: revoked\n    sha256"),
        "fixture changed"
    );
    let inode = std::fs::metadata(proxy.keys_path()).unwrap().ino();

    let at = rewrite_in_place(&proxy.keys_path(), &text);

    assert_in_force("in-place rewrite", at, || works(&proxy, ADDED));
    // The same snapshot carries the revocation.
    expect_openai_error(&proxy.chat(ALICE), 401, "revoked_api_key");
    assert_eq!(
        std::fs::metadata(proxy.keys_path()).unwrap().ino(),
        inode,
        "the rewrite was not in place"
    );
}

/// Trigger 3: a Kubernetes ConfigMap volume. kubelet lays it out as
/// `keys.yaml -> ..data/keys.yaml`, `..data -> ..<timestamp>` (a folder),
/// and updates it by writing a new timestamped folder, pointing a new
/// `..data_tmp` symlink at it, renaming that over `..data`, then deleting
/// the old folder. keys.yaml itself is never touched. Poll off. Two swaps,
/// so a watch that only survives the first one is caught.
#[test]
fn configmap_symlink_swap_is_in_force_within_2s_without_polling() {
    let secrets = ["sk-test-cm-v1", "sk-test-cm-v2", "sk-test-cm-v3"];
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).config(POLL_OFF).start();
    let dir = keys_dir(&proxy);
    let version = |n: usize| {
        let folder = dir.join(format!("..2026_01_0{n}_00_00_00.v{n}"));
        std::fs::create_dir(&folder).unwrap();
        let text = keys_yaml_with(&key_entry(&format!("key_cm_v{n}"), secrets[n - 1]));
        std::fs::write(folder.join("keys.yaml"), text).unwrap();
        folder
    };

    // Set up the layout under the running proxy: v1, then keys.yaml
    // replaced by the `..data/keys.yaml` link.
    let mut current = version(1);
    symlink(current.file_name().unwrap(), dir.join("..data")).unwrap();
    let at = Instant::now();
    link_keys_to(&proxy, Path::new("..data/keys.yaml"));
    let took =
        latency(at, || works(&proxy, secrets[0])).expect("the ConfigMap layout never loaded");
    eprintln!(
        "setup: ConfigMap layout in force after {} ms",
        took.as_millis()
    );

    for n in [2, 3] {
        let next = version(n);
        let data_tmp = dir.join("..data_tmp");
        symlink(next.file_name().unwrap(), &data_tmp).unwrap();
        let at = Instant::now();
        std::fs::rename(&data_tmp, dir.join("..data")).unwrap();
        std::fs::remove_dir_all(&current).unwrap();
        current = next;

        assert_in_force(&format!("configmap swap to v{n}"), at, || {
            works(&proxy, secrets[n - 1])
        });
        // v{n-1}'s key is gone in the same snapshot.
        expect_openai_error(&proxy.chat(secrets[n - 2]), 401, "invalid_api_key");
    }
    assert!(
        std::fs::symlink_metadata(proxy.keys_path())
            .unwrap()
            .file_type()
            .is_symlink(),
        "keys.yaml should still be the ConfigMap's symlink"
    );
}

/// Trigger 4: SIGHUP. keys.yaml links to a file in an unwatched folder;
/// that file is rewritten in place, so no filesystem event reaches the
/// proxy and the poll is off: nothing reloads until the signal. (Should the
/// proxy one day also watch symlink targets' folders, the negative check
/// below fails and this isolation needs another design.)
#[test]
fn sighup_alone_puts_a_change_in_force_within_2s() {
    const ADDED: &str = "sk-test-after-hup";
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).config(POLL_OFF).start();
    let (_outside, target) = keys_via_unwatched_symlink(&proxy);
    let before = successes(&proxy);

    rewrite_in_place(&target, &keys_yaml_with(&key_entry("key_after_hup", ADDED)));

    // Bounded negative check (the only fixed wait here): with no event and
    // no poll, 600 ms (well past the 100–500 ms debounce) pass without a
    // reload. This is what makes the SIGHUP below the proven trigger.
    assert_never(
        Duration::from_millis(600),
        "the change was picked up without SIGHUP (event or poll leaked)",
        || works(&proxy, ADDED),
    );
    assert_eq!(
        successes(&proxy),
        before,
        "a reload happened without SIGHUP"
    );

    let at = Instant::now();
    proxy.signal(libc::SIGHUP);

    assert_in_force("sighup", at, || works(&proxy, ADDED));
    assert!(
        successes(&proxy) > before,
        "the SIGHUP reload was not counted"
    );
}

/// Trigger 5: the content poll alone. Same unwatched-symlink setup, the
/// poll every 200 ms; the target is rewritten in place.
#[test]
fn the_poll_alone_puts_a_change_in_force_within_2s() {
    const ADDED: &str = "sk-test-polled-in";
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("reload_poll_interval_ms: 200")
        .start();
    let (_outside, target) = keys_via_unwatched_symlink(&proxy);

    let at = rewrite_in_place(&target, &keys_yaml_with(&key_entry("key_polled_in", ADDED)));

    assert_in_force("poll (200 ms)", at, || works(&proxy, ADDED));
}

/// A bad file changes nothing, whatever is wrong with it; the next good
/// file lands. Each bad file adds a key that must not start working, and
/// each is told apart by the failure counter going up.
#[test]
fn bad_files_change_nothing_until_a_good_one_lands() {
    const BAD: &str = "sk-test-from-a-bad-file";
    const FIXED: &str = "sk-test-from-the-fixed-file";
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).config(POLL_OFF).start();
    let path = proxy.keys_path();
    let successes_at_start = successes(&proxy);
    let with_bad = |more: &str| keys_yaml_with(&format!("{}{more}", key_entry("key_bad", BAD)));

    // (a) invalid YAML: a plain scalar holding `: `.
    let invalid_yaml = with_bad("  - id: key_broken\n    name: Broken: yaml\n");
    // (b) a valid file cut in the middle of a line: key_bad is whole, the
    //     next entry stops inside its quoted hash.
    let whole = with_bad(&key_entry("key_after", "sk-test-after"));
    let cut = whole.rfind("sha256: \"").unwrap() + "sha256: \"".len() + 20;
    let half_written = whole[..cut].to_string();
    // (c1) a secret hash used twice (key_dup holds BOT's hash).
    let duplicate_hash = with_bad(&format!(
        "  - id: key_dup\n    name: Dup\n    type: workspace-service\n    \
         workspace_id: ws_research\n    sha256: \"{}\"\n    scopes: [\"completions.write\"]\n",
        digest_hex(BOT.as_bytes())
    ));
    // (c2) an unknown scope on another key.
    let unknown_scope = with_bad(
        &key_entry("key_typo", "sk-test-typo").replace("completions.write", "completions.writ"),
    );

    let cases: [(&str, Option<&str>); 5] = [
        ("invalid YAML", Some(&invalid_yaml)),
        ("half-written", Some(&half_written)),
        ("duplicate secret hash", Some(&duplicate_hash)),
        ("unknown scope", Some(&unknown_scope)),
        ("missing file", None),
    ];
    for (what, text) in cases {
        let before = failures(&proxy);
        match text {
            Some(text) => {
                // The file may be gone after the previous case.
                if path.exists() {
                    rewrite_in_place(&path, text);
                } else {
                    replace_atomically(&path, text);
                }
            }
            None => std::fs::remove_file(&path).unwrap(),
        }
        let at = Instant::now();
        let took = latency(at, || failures(&proxy) > before)
            .unwrap_or_else(|| panic!("[{what}] no failed reload counted"));
        eprintln!(
            "[{what}] failed reload counted after {} ms",
            took.as_millis()
        );

        // The last good keys stay in force, with their identities.
        expect_forwarded(&proxy.chat(BOT));
        assert_eq!(
            up.completions
                .requests()
                .pop()
                .unwrap()
                .header("x-scopegate-key-id"),
            Some("key_bot"),
            "[{what}] BOT is served as another key"
        );
        expect_forwarded(&proxy.get("/v1/admin/workspaces").key(ADMIN).send());
        expect_openai_error(&proxy.chat(BAD), 401, "invalid_api_key");
        assert_eq!(proxy.metrics_get("/readyz").status, 200, "[{what}]");
        assert_eq!(
            successes(&proxy),
            successes_at_start,
            "[{what}] a bad file was counted as a successful reload"
        );
    }
    let rejections = keys_errors_logged(&proxy, cases.len());
    eprintln!("rejections logged:\n{}", rejections.join("\n"));

    // Then a good file (the folder has no keys.yaml now) lands.
    let at = replace_atomically(&path, &keys_yaml_with(&key_entry("key_fixed", FIXED)));
    assert_in_force("good file after bad ones", at, || works(&proxy, FIXED));
    expect_openai_error(&proxy.chat(BAD), 401, "invalid_api_key");
    expect_forwarded(&proxy.chat(BOT));
    assert!(successes(&proxy) > successes_at_start);
}

/// The reference on live reload: "the error is logged with its position". A reload rejected for
/// invalid YAML logs `keys.yaml:LINE:COL` with the line of the mistake.
#[test]
fn invalid_yaml_reload_error_is_logged_with_keys_yaml_line_col() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).config(POLL_OFF).start();
    let text = keys_yaml_with("  - id: key_broken\n    name: Broken: yaml\n");
    let line = text
        .lines()
        .position(|l| l.contains("Broken: yaml"))
        .unwrap()
        + 1;
    let before = failures(&proxy);

    replace_atomically(&proxy.keys_path(), &text);

    assert!(
        poll_until(GIVE_UP, || failures(&proxy) > before),
        "no failed reload counted"
    );
    let logged = keys_errors_logged(&proxy, 1);
    let needle = format!("keys.yaml:{line}:");
    let positioned = logged.iter().any(|l| {
        l.split(needle.as_str()).skip(1).any(|rest| {
            let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
            !col.is_empty() && rest[col.len()..].starts_with(':')
        })
    });
    assert!(
        positioned,
        "no `keys.yaml:{line}:COL:` in the logs of the rejected reload:\n{}",
        logged.join("\n")
    );
}

/// Zero failed requests while the file changes 50 times: clients on
/// keep-alive connections send allowed requests (data and control plane)
/// with keys present in every version, while the main thread replaces the
/// file (atomic renames; each version adds a different extra key and drops
/// the previous one).
#[test]
fn no_request_fails_while_the_keys_file_churns() {
    const CLIENTS: usize = 6;
    const REWRITES: usize = 50;
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up).config(POLL_OFF).start();
    let addr = proxy.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let requests = [
        proxy.post("/v1/chat/completions").key(BOT).json(CHAT),
        proxy.get("/v1/configs").key(BOT),
        proxy.get("/v1/admin/workspaces").key(ADMIN),
        proxy.post("/v1/chat/completions").bearer(ALICE).json(CHAT),
        proxy.get("/v1/models").key(LOGGER),
    ]
    .map(|r| r.to_bytes());

    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            let requests = requests.clone();
            thread::spawn(move || {
                let (mut ok, mut failed) = (0usize, Vec::<String>::new());
                let mut conn = Conn::open(addr);
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let bytes = &requests[i % requests.len()];
                    i += 1;
                    let sent = panic::catch_unwind(AssertUnwindSafe(|| {
                        conn.send(bytes);
                        conn.read_response()
                    }));
                    match sent {
                        Ok(resp) if resp.status == 200 && resp.body == br#"{"ok":true}"# => {
                            ok += 1;
                            if resp.header("connection") == Some("close") {
                                conn = Conn::open(addr);
                            }
                        }
                        Ok(resp) => {
                            failed.push(format!("client {c}: {} {}", resp.status, resp.text()));
                        }
                        Err(_) => {
                            failed.push(format!("client {c}: connection error"));
                            conn = Conn::open(addr);
                        }
                    }
                }
                (ok, failed)
            })
        })
        .collect();

    let churn = |n: usize| format!("sk-test-churn-{n}");
    let start_successes = successes(&proxy);
    let started = Instant::now();
    let mut landed = 0;
    for n in 0..REWRITES {
        let before = successes(&proxy);
        replace_atomically(
            &proxy.keys_path(),
            &keys_yaml_with(&key_entry(&format!("key_churn_{n}"), &churn(n))),
        );
        // Wait for this reload (cap 300 ms: debouncing may merge some).
        if poll_until(Duration::from_millis(300), || successes(&proxy) > before) {
            landed += 1;
        }
    }
    let churn_time = started.elapsed();
    // The last version is in force: its key works, the one before is gone.
    assert!(
        poll_until(RELOAD_BOUND, || works(&proxy, &churn(REWRITES - 1))),
        "the last version never came into force"
    );
    expect_openai_error(&proxy.chat(&churn(REWRITES - 2)), 401, "invalid_api_key");

    stop.store(true, Ordering::Relaxed);
    let results: Vec<(usize, Vec<String>)> =
        clients.into_iter().map(|t| t.join().unwrap()).collect();
    let reloads = successes(&proxy) - start_successes;
    let per_client: Vec<usize> = results.iter().map(|(ok, _)| *ok).collect();
    let failed: Vec<&String> = results.iter().flat_map(|(_, f)| f).collect();
    eprintln!(
        "churn: {REWRITES} rewrites in {churn_time:?}, {reloads} successful reloads \
         ({landed} awaited individually), requests per client {per_client:?}, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} requests failed during the churn, first ones: {:#?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    for (c, ok) in per_client.iter().enumerate() {
        assert!(*ok >= 100, "client {c} made only {ok} requests");
    }
    assert!(reloads >= 1.0, "no reload happened during the churn");
}

/// The reference on live reload: rate-limit state survives a reload when the key's id and limits
/// are unchanged, even when the key's other fields change; when the limits
/// change, the key starts from a fresh quota under the new limits.
/// (reload.rs covers a reload that only adds another key.)
#[test]
fn rate_limit_state_follows_the_keys_limits_across_reloads() {
    const MARKER: &str = "sk-test-reload-marker";
    let limited_with = |name: &str, scopes: &str, value: u32| {
        format!(
            r#"  - id: key_limited
    name: {name}
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: [{scopes}]
    rate_limits:
      - {{ type: requests, unit: rph, value: {value} }}
"#,
            digest_hex(LIMITED.as_bytes())
        )
    };
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config(POLL_OFF)
        .keys(&keys_yaml_with(&limited_key_entry()))
        .start();
    let limited = || proxy.chat(LIMITED);
    expect_forwarded(&limited());
    expect_forwarded(&limited());
    expect_openai_error(&limited(), 429, "rate_limited");

    // Same id and limits; name and scopes change, and a marker key shows
    // the reload landed.
    let same_limits = format!(
        "{}{}",
        limited_with("Limited, renamed", r#""completions.write", "logs.view""#, 2),
        key_entry("key_marker", MARKER)
    );
    let at = replace_atomically(&proxy.keys_path(), &keys_yaml_with(&same_limits));
    assert_in_force("rename-only change to a limited key", at, || {
        works(&proxy, MARKER)
    });
    let resp = limited();
    expect_openai_error(&resp, 429, "rate_limited");
    assert_eq!(resp.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(resp.header("x-ratelimit-remaining-requests"), Some("0"));

    // The limit goes from 2 to 5 an hour: a fresh quota of 5.
    let raised = limited_with("Limited, renamed", r#""completions.write""#, 5);
    let at = replace_atomically(&proxy.keys_path(), &keys_yaml_with(&raised));
    assert_in_force("limit change", at, || limited().status == 200);
    for _ in 0..4 {
        let resp = limited();
        expect_forwarded(&resp);
        assert_eq!(resp.header("x-ratelimit-limit-requests"), Some("5"));
    }
    let resp = limited();
    expect_openai_error(&resp, 429, "rate_limited");
    assert_eq!(resp.header("x-ratelimit-limit-requests"), Some("5"));
}

/// The poll reloads on a change only: an untouched file, polled every
/// 50 ms for a second — through the window in which a just-written file's
/// content is read on every poll — is never reloaded.
#[test]
fn the_poll_never_reloads_an_untouched_file() {
    let up = Upstreams::start();
    let proxy = Proxy::builder(&up)
        .config("reload_poll_interval_ms: 50")
        .start();

    let at_start = successes(&proxy);
    std::thread::sleep(Duration::from_millis(1000));

    assert_eq!(at_start, 1.0, "the start-up load counts once");
    assert_eq!(
        successes(&proxy),
        at_start,
        "an unchanged file was reloaded"
    );
    assert_eq!(failures(&proxy), 0.0);
    assert!(works(&proxy, BOT), "the keys loaded at start still work");
}
