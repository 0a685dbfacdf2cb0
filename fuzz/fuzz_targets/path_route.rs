//! Fuzz target `path_route`: the harness is [`scopegate::fuzzing::path_route`], shared
//! with the stable replay test `tests/fuzz_replay.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| scopegate::fuzzing::path_route(data));
