//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`)
//! through the same harness the nightly fuzz target runs
//! (`scopegate::fuzzing`), so the inputs the fuzzer found interesting stay
//! checked on stable, in CI. See `docs/fuzzing.md`.

use std::fs;
use std::path::{Path, PathBuf};

/// Every regular file under `fuzz/<dir>/<target>/`, sorted.
fn inputs(dir: &str, target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let Ok(entries) = fs::read_dir(&root) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs the harness on each input; on a panic, names the file.
fn replay(dir: &str, target: &str, harness: fn(&[u8])) -> usize {
    let files = inputs(dir, target);
    for file in &files {
        let data = fs::read(file).expect("corpus file is readable");
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(
            outcome.is_ok(),
            "{} fails the `{target}` harness",
            file.display()
        );
    }
    files.len()
}

fn replay_corpus(target: &str, harness: fn(&[u8])) {
    let n = replay("corpus", target, harness);
    assert!(n > 0, "fuzz/corpus/{target}/ is empty or missing");
}

#[test]
fn path_route_corpus_holds() {
    replay_corpus("path_route", scopegate::fuzzing::path_route);
}

#[test]
fn keys_reader_corpus_holds() {
    replay_corpus("keys_reader", scopegate::fuzzing::keys_reader);
}

#[test]
fn json_workspace_corpus_holds() {
    replay_corpus("json_workspace", scopegate::fuzzing::json_workspace);
}

#[test]
fn query_corpus_holds() {
    replay_corpus("query", scopegate::fuzzing::query);
}

#[test]
fn usage_sse_corpus_holds() {
    replay_corpus("usage_sse", scopegate::fuzzing::usage_sse);
}

#[test]
fn usage_json_corpus_holds() {
    replay_corpus("usage_json", scopegate::fuzzing::usage_json);
}

#[test]
fn request_body_corpus_holds() {
    replay_corpus("request_body", scopegate::fuzzing::request_body);
}

#[test]
fn token_shape_corpus_holds() {
    replay_corpus("token_shape", scopegate::fuzzing::token_shape);
}

#[test]
fn content_type_corpus_holds() {
    replay_corpus("content_type", scopegate::fuzzing::content_type);
}
