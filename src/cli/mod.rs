//! The command line (the reference on the command line): `serve`, `check`,
//! `hash-key`, `new-key`, `explain`, `usage`, `inspect-token` and `demo`
//! (with the demo upstreams). May import every room.

pub mod demo;
mod explain;
mod price_warnings;
mod usage_cmd;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config};
use crate::decision::routes::RouteTable;
use crate::diag::Diagnostic;
use crate::identity::keys::{self, KeyStore, Snapshot};
use crate::identity::token;

/// scopegate: a reverse proxy that enforces API-key scopes for LLM
/// completion and admin traffic.
#[derive(Debug, Parser)]
#[command(name = "scopegate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// Server config file [env: SCOPEGATE_CONFIG; default: config/scopegate.yaml]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(config::default_config_path)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(ConfigArg),
    /// Validate the config and its keys file without serving.
    ///
    /// Write keys files atomically (write a new file, then rename it over
    /// the old one; editors and Kubernetes ConfigMaps do): a running proxy
    /// loads a file rewritten in place only once its content has been
    /// unchanged for 1.3 s, so a half-written file is never in force.
    Check(ConfigArg),
    /// Read one key from stdin and print its SHA-256 (for the keys file).
    HashKey,
    /// Make a new random key: the secret once on stderr, a keys-file entry on stdout.
    NewKey(NewKeyArgs),
    /// Show the decision the proxy would make for a key and a request.
    Explain(ExplainArgs),
    /// Current usage against limits, for keys and workspaces with usage_limits.
    Usage(UsageArgs),
    /// Read an identity token (JWT) from stdin; print each check and the identity it yields.
    ///
    /// The token is read from stdin only, never from an argument (arguments
    /// end up in shell history and process lists). Exit 0 when the proxy
    /// would accept it.
    InspectToken(ConfigArg),
    /// Run the proxy on the example config with built-in demo upstreams.
    Demo,
}

#[derive(Debug, Args)]
struct UsageArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this key
    #[arg(long, conflicts_with = "workspace")]
    key: Option<String>,
    /// Only this workspace (id or slug)
    #[arg(long)]
    workspace: Option<String>,
    /// JSON instead of a table
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct NewKeyArgs {
    /// organisation-service, workspace-service or workspace-user
    #[arg(long = "type", value_name = "TYPE")]
    key_type: String,
    /// Human name of the key
    #[arg(long)]
    name: String,
    /// Key id (default: derived from the name)
    #[arg(long)]
    id: Option<String>,
    /// Workspace id or slug (workspace keys)
    #[arg(long)]
    workspace: Option<String>,
    /// User id (workspace-user keys)
    #[arg(long)]
    user: Option<String>,
    /// Organisation id
    #[arg(long)]
    organisation: Option<String>,
    /// Comma-separated scopes
    #[arg(long, value_delimiter = ',')]
    scopes: Vec<String>,
    /// Validate against this config's keys file (workspace exists, id unused)
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The key's id in the keys file
    #[arg(
        long = "key-id",
        required_unless_present = "token",
        conflicts_with = "token"
    )]
    key_id: Option<String>,
    /// Explain the request of an identity token read from stdin (never an
    /// argument) instead of a key
    #[arg(long)]
    token: bool,
    /// HTTP method
    method: String,
    /// Path and query, e.g. /v1/chat/completions or /v1/configs?workspace_id=ws
    path_and_query: String,
    /// Request body (JSON) for control-plane writes
    #[arg(long, value_name = "FILE")]
    body: Option<PathBuf>,
    /// Content-Type of the body
    #[arg(long, default_value = "application/json")]
    content_type: String,
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(c) => serve(&c.path()),
        Command::Check(c) => check(&c.path()),
        Command::HashKey => hash_key(),
        Command::NewKey(args) => new_key(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Usage(args) => usage(&args),
        Command::InspectToken(c) => inspect_token(&c.path()),
        Command::Demo => crate::cli::demo::run(),
    }
}

fn print_problems(problems: &[Diagnostic]) {
    let mut err = std::io::stderr().lock();
    for p in problems {
        let _ = writeln!(err, "{p}");
    }
}

/// Loads config, route table and keys; every problem is returned.
///
/// # Errors
/// All problems found in the config or the keys file.
pub fn load_all(path: &Path) -> Result<(Config, RouteTable, Snapshot), Vec<Diagnostic>> {
    let config = config::load_config(path)?;
    let table = crate::config::route_table(&config)?;
    let snap = crate::ops::reload::load_keys(&config.keys_file, &table)?;
    Ok((config, table, snap))
}

fn serve(path: &Path) -> ExitCode {
    // Like an invalid keys file, a JWK set file that cannot be used is
    // fatal at start (on a reload, its last good set stays).
    let loaded = load_all(path).and_then(|(config, table, snap)| {
        if snap.identity().any() {
            let text = keys::read_keys_file(&config.keys_file).map_err(|d| vec![d])?;
            token::files::load_files(&snap, &config.keys_file, &text)?;
        }
        Ok((config, table, snap))
    });
    let (config, table, snap) = match loaded {
        Ok(x) => x,
        Err(problems) => {
            print_problems(&problems);
            return ExitCode::FAILURE;
        }
    };
    crate::gateway::server::init_logging(config.log_format);
    for w in unmetered_route_warnings(&config, &table, &snap) {
        tracing::warn!(route = w.message.as_str(), "extra route is not metered");
    }
    for w in price_warnings::unpriced_model_warnings(&config.keys_file, &snap) {
        tracing::warn!(problem = %w, "model allowlist pattern without a price");
    }
    match crate::gateway::server::serve(config, table, KeyStore::new(snap)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "scopegate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    // TLS files are checked as `serve` loads them: readable, key matching
    // the certificate, not expired.
    let loaded = load_all(path).and_then(|(config, table, snap)| {
        let tls = crate::gateway::tls_listen::load_listeners(&config)?;
        // The files identity_tokens names: JWK sets and CA files.
        let jwks = if snap.identity().any() {
            let text = keys::read_keys_file(&config.keys_file).map_err(|d| vec![d])?;
            token::files::load_files(&snap, &config.keys_file, &text)?.len()
        } else {
            0
        };
        Ok((config, table, snap, tls.len(), jwks))
    });
    match loaded {
        Ok((config, table, snap, tls, jwks)) => {
            for w in unmetered_route_warnings(&config, &table, &snap) {
                eprintln!("{w}");
            }
            for w in price_warnings::unpriced_model_warnings(&config.keys_file, &snap) {
                eprintln!("{w}");
            }
            let tls = match tls {
                0 => String::new(),
                1 => "; 1 TLS listener".to_string(),
                n => format!("; {n} TLS listeners"),
            };
            let issuers = snap.identity().all().count();
            let tokens = match (issuers, jwks) {
                (0, _) => String::new(),
                (n, files) => {
                    let plural = |n: usize, what: &str| {
                        format!("{n} {what}{}", if n == 1 { "" } else { "s" })
                    };
                    format!(
                        "; identity tokens from {} ({})",
                        plural(n, "issuer"),
                        plural(files, "JWK set file")
                    )
                }
            };
            println!(
                "{}: ok: {} keys, {} organisations, {} workspaces, {} routes; keys file {}{tls}{tokens}",
                config.path.display(),
                snap.keys().len(),
                snap.organisations().len(),
                snap.workspaces().len(),
                table.routes().len(),
                config.keys_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            print_problems(&problems);
            ExitCode::FAILURE
        }
    }
}

/// Reads what stdin holds, trimmed; a leading `Bearer ` (as copied from an
/// `Authorization` header) is dropped.
pub(crate) fn read_token() -> Result<String, String> {
    let mut input = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let token = input.trim();
    let token = match token.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => token[7..].trim_start(),
        _ => token,
    };
    if token.is_empty() {
        return Err("no token on stdin".to_string());
    }
    Ok(token.to_string())
}

/// The JWK sets a token is verified with at the command line: each
/// `jwks_file`, and each `jwks_url` fetched once, as the proxy does at
/// start. `None` (with the problems printed) when a file cannot be used.
pub(crate) fn token_sets(
    config: &config::Config,
    snap: &keys::Snapshot,
    command: &str,
) -> Option<std::collections::HashMap<keys::OrgIdx, std::sync::Arc<token::JwksSet>>> {
    let files = keys::read_keys_file(&config.keys_file)
        .map_err(|d| vec![d])
        .and_then(|text| token::files::load_files(snap, &config.keys_file, &text));
    let mut sets = match files {
        Ok(sets) => sets,
        Err(problems) => {
            print_problems(&problems);
            return None;
        }
    };
    // JWK sets at a URL: fetched once, as the proxy does at start.
    let urls: Vec<_> = snap
        .identity()
        .all()
        .filter_map(|s| match &s.jwks {
            keys::JwksSource::Url { url, ca_file, .. } => {
                Some((s.organisation, url.clone(), ca_file.clone()))
            }
            keys::JwksSource::File(_) => None,
        })
        .collect();
    if !urls.is_empty() {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("scopegate {command}: {e}");
                return None;
            }
        };
        for (org, url, ca_file) in urls {
            let fetched = token::fetch::tls_config(ca_file.as_deref())
                .map_err(|e| e.to_string())
                .and_then(|tls| {
                    runtime
                        .block_on(token::fetch::fetch_jwks(
                            &url,
                            &tls,
                            token::fetch::DEFAULT_TIMEOUT,
                        ))
                        .map_err(|e| e.to_string())
                });
            match fetched {
                Ok(set) => {
                    sets.insert(org, std::sync::Arc::new(set));
                }
                Err(e) => eprintln!(
                    "scopegate {command}: organisation {}: cannot fetch {url}: {e}",
                    snap.organisation(org).id
                ),
            }
        }
    }
    Some(sets)
}

fn inspect_token(path: &Path) -> ExitCode {
    let token = match read_token() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("scopegate inspect-token: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (config, table, snap) = match load_all(path) {
        Ok(x) => x,
        Err(problems) => {
            print_problems(&problems);
            return ExitCode::FAILURE;
        }
    };
    if !snap.identity().any() {
        eprintln!(
            "scopegate inspect-token: no organisation of {} has identity_tokens",
            config.keys_file.display()
        );
        return ExitCode::FAILURE;
    }
    let Some(sets) = token_sets(&config, &snap, "inspect-token") else {
        return ExitCode::FAILURE;
    };
    let report = token::inspect(&token, keys::now_millis(), &snap, &sets);
    print!("{}", report.render(&snap, table.registry()));
    if report.accepted() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Warnings (not errors: `check` still succeeds) about extra data-plane
/// routes without `meter` that a key whose tokens are counted — it or its
/// workspace has token rate limits or a usage limit — has the scopes for:
/// such a key's requests there are forwarded without counting the tokens
/// their answers report. Routes on a counted built-in pattern (counted
/// anyway) and on batches or stored-prompt completions (refused to such
/// keys) are left out. Each names the route's place in the config file.
pub fn unmetered_route_warnings(
    config: &Config,
    table: &RouteTable,
    snap: &Snapshot,
) -> Vec<Diagnostic> {
    use crate::decision::routes::{is_opaque, Plane};
    use crate::limits::UsageApi;
    let text = std::fs::read_to_string(&config.path).unwrap_or_default();
    let index = crate::diag::position::PositionIndex::new(&text);
    let mut out = Vec::new();
    for (i, spec) in config.routes.iter().enumerate() {
        // `meter` counts POST answers and never an upgraded connection: a
        // route where it could not be set gets no advice to set it.
        if spec.plane != Plane::Data
            || spec.meter.is_some()
            || spec.upgrade.is_some()
            || !spec.methods.iter().any(|m| m == "POST")
            || UsageApi::of_builtin(&spec.path).is_some()
            || is_opaque(&http::Method::POST, &spec.path)
        {
            continue;
        }
        let requirements: Vec<_> = table
            .routes()
            .iter()
            .filter(|r| {
                *r.pattern == *spec.path && spec.methods.iter().any(|m| m == r.method.as_str())
            })
            .map(|r| r.requirement)
            .collect();
        let now = keys::now_millis();
        let reaching: Vec<&str> = snap
            .keys()
            .iter()
            .enumerate()
            .filter(|(k, key)| {
                let (own, ws) = snap.limits_for(keys::KeyIdx(*k as u32));
                !key.key_type.is_admin()
                    && key.status != keys::KeyStatus::Revoked
                    && key.expires_at.is_none_or(|t| t > now)
                    && (own.counts_tokens() || ws.is_some_and(crate::limits::Limits::counts_tokens))
                    && requirements.iter().any(|r| r.is_met_by(&key.scopes))
            })
            .map(|(_, key)| &*key.id)
            .collect();
        if reaching.is_empty() {
            continue;
        }
        let shown = match reaching.len() {
            1..=3 => reaching.join(", "),
            n => format!("{} and {} more", reaching[..3].join(", "), n - 3),
        };
        let message = format!(
            "warning: routes[{i}]: {} {} is a data-plane route without `meter`, and keys whose \
             tokens are counted (token rate limits or a usage limit) can call it: {shown}; the \
             tokens its answers use are not counted. If it answers like one of them, add \
             `meter: chat`, `completions`, `embeddings`, `responses` or `messages`.",
            spec.methods.join(", "),
            spec.path
        );
        out.push(Diagnostic {
            file: config.path.clone(),
            position: index
                .as_ref()
                .and_then(|ix| ix.locate(&format!("routes[{i}]"))),
            message,
        });
    }
    out
}

fn hash_key() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("scopegate hash-key: cannot read stdin: {e}");
        return ExitCode::FAILURE;
    }
    if input.last() == Some(&b'\n') {
        input.pop();
        if input.last() == Some(&b'\r') {
            input.pop();
        }
    }
    if input.is_empty() {
        eprintln!("scopegate hash-key: no key on stdin");
        return ExitCode::FAILURE;
    }
    println!("{}", keys::digest_hex(&input));
    ExitCode::SUCCESS
}

fn slug_id(name: &str) -> String {
    let mut id = String::from("key_");
    let mut last_us = true;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c.to_ascii_lowercase());
            last_us = false;
        } else if !last_us {
            id.push('_');
            last_us = true;
        }
    }
    while id.ends_with('_') && id.len() > 4 {
        id.pop();
    }
    if id == "key_" {
        id.push_str("new");
    }
    id
}

fn new_key(args: &NewKeyArgs) -> ExitCode {
    let mut raw = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut raw) {
        eprintln!("scopegate new-key: no randomness from the OS: {e}");
        return ExitCode::FAILURE;
    }
    let secret = format!("sgk-{}", hex::encode(raw));
    let spec = keys::KeySpec {
        id: args.id.clone().unwrap_or_else(|| slug_id(&args.name)),
        name: args.name.clone(),
        key_type: args.key_type.clone(),
        organisation_id: args.organisation.clone(),
        workspace_id: args.workspace.clone(),
        user_id: args.user.clone(),
        sha256: Some(keys::digest_hex(secret.as_bytes())),
        scopes: args.scopes.clone(),
        ..keys::KeySpec::default()
    };
    if let Err(problems) = validate_new_key(&spec, args.config.as_deref()) {
        for p in problems {
            eprintln!("scopegate new-key: {p}");
        }
        return ExitCode::FAILURE;
    }
    let entry = match serde_yaml::to_string(&vec![spec]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("scopegate new-key: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = String::new();
    for line in entry.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    eprintln!("New API key (shown once; store it now): {secret}");
    print!("{out}");
    ExitCode::SUCCESS
}

/// Checks a new key by the keys-file rules: against the real keys file when
/// a config is given, else against a minimal document around it.
fn validate_new_key(spec: &keys::KeySpec, config: Option<&Path>) -> Result<(), Vec<String>> {
    let (mut doc, table) = match config {
        Some(path) => {
            let config = config::load_config(path)
                .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
            let table = crate::config::route_table(&config)
                .map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?;
            let text = std::fs::read_to_string(&config.keys_file)
                .map_err(|e| vec![format!("{}: {e}", config.keys_file.display())])?;
            let doc: keys::KeysDocument = serde_yaml::from_str(&text)
                .map_err(|e| vec![format!("{}: {e}", config.keys_file.display())])?;
            (doc, table)
        }
        None => {
            let table =
                RouteTable::build(&[], true).map_err(|_| vec!["route table".to_string()])?;
            let org = spec.organisation_id.clone().unwrap_or_else(|| "org".into());
            let mut workspaces = Vec::new();
            if let Some(ws) = &spec.workspace_id {
                workspaces.push(keys::WorkspaceSpec {
                    id: ws.clone(),
                    ..keys::WorkspaceSpec::default()
                });
            }
            let doc = keys::KeysDocument {
                organisations: vec![keys::OrganisationSpec {
                    id: org,
                    workspaces,
                    ..keys::OrganisationSpec::default()
                }],
                ..keys::KeysDocument::default()
            };
            (doc, table)
        }
    };
    let index = doc.keys.len();
    doc.keys.push(spec.clone());
    match keys::build_snapshot(&doc, table.registry()) {
        Ok(_) => Ok(()),
        Err(problems) => {
            let prefix = format!("keys[{index}]");
            let mine: Vec<String> = problems
                .iter()
                .filter(|p| p.path.starts_with(&prefix) || p.path.is_empty())
                .map(|p| p.message.clone())
                .collect();
            if mine.is_empty() {
                // The existing file has problems of its own; report them.
                Err(problems.iter().map(ToString::to_string).collect())
            } else {
                Err(mine)
            }
        }
    }
}

fn usage(args: &UsageArgs) -> ExitCode {
    let (config, _table, snap) = match load_all(&args.config.path()) {
        Ok(x) => x,
        Err(problems) => {
            print_problems(&problems);
            return ExitCode::FAILURE;
        }
    };
    usage_cmd::run(
        &config,
        &snap,
        args.key.as_deref(),
        args.workspace.as_deref(),
        args.json,
    )
}
