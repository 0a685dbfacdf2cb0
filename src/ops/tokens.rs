//! Identity tokens at run time (docs/reference.md#identity-tokens): the JWK
//! sets in force — from files (loaded by the keys reloader,
//! [`super::reload`]) and from URLs (fetched here, by the background
//! service `jwks`) — the cache of verified tokens, and the one call the
//! request path makes: [`TokenKeys::check`].
//!
//! - A `jwks_url` is fetched at start, every `jwks_refresh_seconds`, and
//!   when a token names an unknown `kid` (at most once per 10 s: the
//!   schedule is [`RefreshState`]); a failed fetch keeps the last good set.
//!   The request that named the unknown `kid` waits for that fetch at most
//!   [`UNKNOWN_KID_WAIT`], then is answered with what is in force.
//! - A cached identity is used only while the identity settings and its
//!   organisation's JWK set are those it was verified under
//!   ([`VerifiedIdentity::still_holds`]): a reload that changes an outcome
//!   drops it, one that changes nothing keeps it.
//! - The three token metrics live here; no label holds a subject.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntGaugeVec;
use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounter, IntCounterVec};
use tokio::sync::{mpsc, watch};

use super::reload::JwksSets;
use crate::identity::keys::{now_millis, JwksSource, KeyStore, OrgIdx, Snapshot, UnixMillis};
use crate::identity::token::fetch::{fetch_jwks, tls_config, FetchError, DEFAULT_TIMEOUT};
use crate::identity::token::{
    verify, Failure, JwksSet, KeySets, RefreshPolicy, RefreshState, TokenCache, TokenOutcome,
};

/// The JWK sets fetched from `jwks_url`s, by URL.
pub type UrlSets = HashMap<Arc<str>, Arc<JwksSet>>;

/// The longest a request naming an unknown `kid` waits for the fetch it
/// triggers.
pub const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(3);

/// The token metrics (docs/reference.md#token-metrics).
pub struct TokenMetrics {
    /// `scopegate_token_verifications_total{result}`: `ok`, `invalid`,
    /// `expired`, `revoked`, `unavailable` (in that order).
    verifications: [IntCounter; 5],
    /// `scopegate_jwks_refreshes_total{organisation, result}`.
    pub refreshes: IntCounterVec,
    /// `scopegate_jwks_keys{organisation}`.
    pub keys: IntGaugeVec,
}

static TOKEN_METRICS: OnceLock<Option<TokenMetrics>> = OnceLock::new();

/// The token metrics, registered on first use (the server touches them at
/// start, so `/metrics` shows them before the first token).
pub fn token_metrics() -> Option<&'static TokenMetrics> {
    TOKEN_METRICS
        .get_or_init(|| TokenMetrics::register().ok())
        .as_ref()
}

impl TokenMetrics {
    fn register() -> prometheus::Result<TokenMetrics> {
        let v = register_int_counter_vec!(
            "scopegate_token_verifications_total",
            "Identity tokens presented, by outcome (a cached token counts as ok).",
            &["result"]
        )?;
        let c = |r: &str| v.with_label_values(&[r]);
        Ok(TokenMetrics {
            verifications: [
                c("ok"),
                c("invalid"),
                c("expired"),
                c("revoked"),
                c("unavailable"),
            ],
            refreshes: register_int_counter_vec!(
                "scopegate_jwks_refreshes_total",
                "Loads of JWK sets (files) and fetches (URLs), by organisation and result: ok, or \
                 why it failed.",
                &["organisation", "result"]
            )?,
            keys: register_int_gauge_vec!(
                "scopegate_jwks_keys",
                "Usable keys in the JWK set in force, by organisation.",
                &["organisation"]
            )?,
        })
    }

    fn count(&self, outcome: Result<(), Failure>) {
        let i = match outcome {
            Ok(()) => 0,
            Err(Failure::Invalid) => 1,
            Err(Failure::Expired) => 2,
            Err(Failure::Revoked) => 3,
            Err(Failure::Unavailable) => 4,
        };
        self.verifications[i].inc();
    }

    /// Records a load or fetch of `org`'s set: `result` is `ok` or why it
    /// failed; `keys` the usable keys now in force, when known.
    pub fn refreshed(&self, org: &str, result: &str, keys: Option<usize>) {
        self.refreshes.with_label_values(&[org, result]).inc();
        if let Some(n) = keys {
            self.keys.with_label_values(&[org]).set(n as i64);
        }
    }
}

/// The TLS client configuration of a URL, or why there is none.
type Tls = Result<Arc<rustls::ClientConfig>, String>;

/// One `jwks_url` and its schedule.
struct UrlState {
    refresh: RefreshState,
    ca_file: Option<PathBuf>,
    every: Duration,
    tls: Tls,
    /// Fetches finished (either way): a waiting request watches it move.
    completed: u64,
}

/// The JWK sets in force and the verified-token cache.
pub struct TokenKeys {
    store: KeyStore,
    files: Arc<ArcSwap<JwksSets>>,
    urls: ArcSwap<UrlSets>,
    cache: TokenCache,
    states: Mutex<HashMap<Arc<str>, UrlState>>,
    kick_tx: mpsc::UnboundedSender<Arc<str>>,
    kick_rx: Mutex<Option<mpsc::UnboundedReceiver<Arc<str>>>>,
    done: watch::Sender<u64>,
    fetch_timeout: Duration,
}

/// The sets a verification reads: files by organisation, URLs by URL.
pub struct Sets<'a> {
    snap: &'a Snapshot,
    files: arc_swap::Guard<Arc<JwksSets>>,
    urls: arc_swap::Guard<Arc<UrlSets>>,
}

impl KeySets for Sets<'_> {
    fn key_set(&self, org: OrgIdx) -> Option<&JwksSet> {
        match &self.snap.identity().for_org(org)?.jwks {
            JwksSource::File(_) => self.files.get(&org).map(|s| &**s),
            JwksSource::Url { url, .. } => self.urls.get(url).map(|s| &**s),
        }
    }
}

/// The `jwks_url` of an organisation, if its keys come from one.
fn url_of(snap: &Snapshot, org: Option<OrgIdx>) -> Option<Arc<str>> {
    match &snap.identity().for_org(org?)?.jwks {
        JwksSource::Url { url, .. } => Some(url.clone()),
        JwksSource::File(_) => None,
    }
}

impl TokenKeys {
    /// The token keys of the snapshots in `store`, with the file sets the
    /// keys reloader keeps in `files`.
    pub fn new(store: KeyStore, files: Arc<ArcSwap<JwksSets>>) -> Arc<TokenKeys> {
        let (kick_tx, kick_rx) = mpsc::unbounded_channel();
        let _ = token_metrics();
        Arc::new(TokenKeys {
            store,
            files,
            urls: ArcSwap::from_pointee(UrlSets::new()),
            cache: TokenCache::default(),
            states: Mutex::new(HashMap::new()),
            kick_tx,
            kick_rx: Mutex::new(Some(kick_rx)),
            done: watch::Sender::new(0),
            fetch_timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The sets in force, for verifying against `snap`.
    pub fn sets<'a>(&self, snap: &'a Snapshot) -> Sets<'a> {
        Sets {
            snap,
            files: self.files.load(),
            urls: self.urls.load(),
        }
    }

    /// The cache of verified tokens.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// A cached identity for `token` that still holds, counted as `ok`.
    pub fn cached(&self, token: &str, snap: &Snapshot, now: UnixMillis) -> Option<TokenOutcome> {
        self.cached_digest(&TokenCache::key(token), snap, now)
    }

    /// [`TokenKeys::cached`] by the token's digest ([`TokenCache::key`]).
    pub fn cached_digest(
        &self,
        digest: &crate::identity::keys::Digest,
        snap: &Snapshot,
        now: UnixMillis,
    ) -> Option<TokenOutcome> {
        let id = self.cache.get(digest, now)?;
        if !id.still_holds(snap, &self.sets(snap)) {
            return None;
        }
        if let Some(m) = token_metrics() {
            m.count(Ok(()));
        }
        Some(Ok(id))
    }

    /// Verifies `token` (cache first). A token naming a `kid` its
    /// organisation's fetched set lacks may wait, at most
    /// [`UNKNOWN_KID_WAIT`], for the set to be fetched again.
    pub async fn check(&self, token: &str, snap: &Snapshot) -> TokenOutcome {
        if let Some(hit) = self.cached(token, snap, now_millis()) {
            return hit;
        }
        let mut outcome = self.verify_now(token, snap);
        if let Err(e) = &outcome {
            if let Some(url) = e
                .unknown_kid
                .then(|| url_of(snap, e.organisation))
                .flatten()
            {
                if self.refetch(&url).await {
                    outcome = self.verify_now(token, snap);
                }
            }
        }
        if let Some(m) = token_metrics() {
            m.count(outcome.as_ref().map(|_| ()).map_err(|e| e.failure));
        }
        outcome
    }

    /// Verifies against the sets in force and caches an identity.
    fn verify_now(&self, token: &str, snap: &Snapshot) -> TokenOutcome {
        // Read before the sets: a verification that races a change is not
        // remembered into the next generation.
        let generation = self.cache.generation();
        let id = Arc::new(verify(token, now_millis(), snap, &self.sets(snap))?);
        self.cache
            .insert(TokenCache::key(token), id.clone(), generation);
        Ok(id)
    }

    /// Asks for `url` to be fetched now, if the unknown-`kid` rule allows,
    /// and waits for the fetch (bounded). Whether one finished.
    async fn refetch(&self, url: &Arc<str>) -> bool {
        let mut done = self.done.subscribe();
        let before = {
            let mut states = self.states.lock();
            let Some(s) = states.get_mut(url) else {
                return false;
            };
            if !s.refresh.on_unknown_kid(Instant::now()) {
                return false;
            }
            s.completed
        };
        if self.kick_tx.send(url.clone()).is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + UNKNOWN_KID_WAIT;
        loop {
            let finished = self
                .states
                .lock()
                .get(url)
                .is_some_and(|s| s.completed > before);
            if finished {
                return true;
            }
            match tokio::time::timeout_at(deadline, done.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// Brings the URL states in line with the keys in force: new URLs are
    /// due now, removed ones (and their sets) go.
    fn sync_urls(&self) {
        let snap = self.store.load();
        let mut wanted: HashMap<Arc<str>, (Option<PathBuf>, Duration)> = HashMap::new();
        for s in snap.identity().all() {
            if let JwksSource::Url {
                url,
                ca_file,
                refresh,
            } = &s.jwks
            {
                wanted.insert(url.clone(), (ca_file.clone(), *refresh));
            }
        }
        let mut states = self.states.lock();
        let now = Instant::now();
        states.retain(|url, s| {
            wanted
                .get(url)
                .is_some_and(|(ca, every)| *ca == s.ca_file && *every == s.every)
        });
        for (url, (ca_file, every)) in wanted {
            states.entry(url).or_insert_with(|| UrlState {
                refresh: RefreshState::new(RefreshPolicy::new(every), now),
                // Roots that cannot be loaded fail this URL's `https`
                // fetches with the reason; `http` (loopback) needs none.
                tls: tls_config(ca_file.as_deref()),
                ca_file,
                every,
                completed: 0,
            });
        }
        let urls = self.urls.load();
        if urls.keys().any(|u| !states.contains_key(u)) {
            let kept: UrlSets = urls
                .iter()
                .filter(|(u, _)| states.contains_key(*u))
                .map(|(u, s)| (u.clone(), s.clone()))
                .collect();
            self.urls.store(Arc::new(kept));
        }
    }

    /// The fetches due now (taken as started), and when the next is due.
    fn due(&self) -> (Vec<(Arc<str>, Tls)>, Instant) {
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        let mut due = Vec::new();
        for (url, s) in self.states.lock().iter_mut() {
            if s.refresh.poll(now) {
                due.push((url.clone(), s.tls.clone()));
            }
            next = next.min(s.refresh.next_due().max(now));
        }
        (due, next)
    }

    fn tls_of(&self, url: &str) -> Tls {
        self.states
            .lock()
            .get(url)
            .map_or_else(|| Err("no longer configured".into()), |s| s.tls.clone())
    }

    /// What a fetch of `url` brought: the set goes in force (or the last
    /// good one stays), counted per organisation using the URL.
    fn fetched(&self, url: Arc<str>, result: Result<JwksSet, FetchError>) {
        let now = Instant::now();
        let snap = self.store.load();
        let orgs: Vec<Arc<str>> = snap
            .identity()
            .all()
            .filter(|s| matches!(&s.jwks, JwksSource::Url { url: u, .. } if *u == url))
            .map(|s| snap.organisation(s.organisation).id.clone())
            .collect();
        let mut states = self.states.lock();
        let Some(state) = states.get_mut(&url) else {
            return;
        };
        state.completed += 1;
        match result {
            Ok(set) => {
                state.refresh.on_success(now);
                let n = set.len();
                let changed = self
                    .urls
                    .load()
                    .get(&url)
                    .is_none_or(|old| old.digest() != set.digest());
                if changed {
                    let mut sets = (**self.urls.load()).clone();
                    sets.insert(url.clone(), Arc::new(set));
                    self.urls.store(Arc::new(sets));
                    tracing::info!(url = &*url, keys = n, "JWK set fetched");
                }
                for org in &orgs {
                    if let Some(m) = token_metrics() {
                        m.refreshed(org, "ok", Some(n));
                    }
                }
            }
            Err(e) => {
                state.refresh.on_failure(now);
                tracing::warn!(
                    url = &*url,
                    error = %e,
                    retry_in_ms = state.refresh.next_due().saturating_duration_since(now).as_millis() as u64,
                    "JWK set fetch failed; the last good set stays in force"
                );
                for org in &orgs {
                    if let Some(m) = token_metrics() {
                        m.refreshed(org, e.as_str(), None);
                    }
                }
            }
        }
        drop(states);
        self.done.send_modify(|n| *n += 1);
    }

    /// The `jwks` background service: fetches each `jwks_url` when due or
    /// asked, until shutdown.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let Some(mut kicks) = self.kick_rx.lock().take() else {
            return;
        };
        let mut running = tokio::task::JoinSet::new();
        let timeout = self.fetch_timeout;
        let spawn = |running: &mut tokio::task::JoinSet<_>, url: Arc<str>, tls: Tls| {
            running.spawn(async move {
                let result = match tls {
                    Ok(tls) => fetch_jwks(&url, &tls, timeout).await,
                    Err(e) if url.starts_with("https:") => Err(FetchError::Tls(e)),
                    Err(_) => match plain_tls() {
                        Some(tls) => fetch_jwks(&url, &tls, timeout).await,
                        None => Err(FetchError::Tls("no TLS configuration".into())),
                    },
                };
                (url, result)
            });
        };
        loop {
            self.sync_urls();
            let (due, next) = self.due();
            for (url, tls) in due {
                spawn(&mut running, url, tls);
            }
            tokio::select! {
                _ = shutdown.changed() => {
                    running.abort_all();
                    return;
                }
                Some(url) = kicks.recv() => {
                    let tls = self.tls_of(&url);
                    spawn(&mut running, url, tls);
                }
                Some(Ok((url, result))) = running.join_next(), if !running.is_empty() => {
                    self.fetched(url, result);
                }
                () = tokio::time::sleep_until(next.into()) => {}
            }
        }
    }
}

/// A client configuration for plain-HTTP fetches (loopback), which never
/// use it: the fetch takes one whatever the scheme.
fn plain_tls() -> Option<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()
        .map(|b| {
            Arc::new(
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        })
}

/// [`TokenKeys::run`] as a named background service.
pub struct JwksService(pub Arc<TokenKeys>);

#[async_trait]
impl BackgroundService for JwksService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}
