//! End-to-end tests: the real `scopegate` binary between a test client and
//! two recording upstreams (completions and admin). One integration-test
//! binary; each area of the contract (docs/reference.md) is a submodule.
//!
//! Every test starts its own proxy and upstreams on fresh ports, so tests
//! run in parallel and share no state.

mod e2e {
    pub mod certs;
    pub mod client;
    pub mod fixtures;
    pub mod harness;
    pub mod otlp;
    pub mod upstream;

    mod cached_pricing;
    mod cli;
    mod connections;
    mod decision;
    mod forwarding;
    mod hostile;
    mod identity_cli;
    mod identity_restart;
    mod identity_tokens;
    mod key_headers;
    mod key_view;
    mod keytools;
    mod metering;
    mod metering_answers;
    mod metrics;
    mod observability;
    mod paths;
    mod protocols;
    mod ratelimits;
    mod reload;
    mod reload_triggers;
    mod replicas;
    mod routes;
    mod shutdown;
    pub mod spending;
    mod streaming;
    mod tls;
    mod tls_listener;
    mod traces;
    mod traces_pipeline;
    mod upgrade;
    mod workspaces;
}
