use super::*;

/// What serde_yaml makes of a text.
fn serde(text: &str) -> Result<KeysDocument, serde_yaml::Error> {
    serde_yaml::from_str(text)
}

/// The guarantee: whatever the fast reader accepts, serde_yaml reads the
/// same way. Returns whether the fast reader accepted it.
fn agrees(text: &str) -> bool {
    let Some(fast) = read(text) else {
        return false;
    };
    match serde(text) {
        Ok(slow) => assert_eq!(fast, slow, "readers disagree on:\n{text}"),
        Err(e) => panic!("fast reader accepted what serde_yaml refuses ({e}):\n{text}"),
    }
    true
}

const SAMPLE: &str = "\
# A keys file in the style of the reference's examples.
organisations:
  - id: org_acme
    workspaces:
      - id: ws_research            # canonical id
        slug: research
        models: [\"gpt-4o*\", text-embedding-3-small]
        rate_limits: [{ type: tokens, unit: rpm, value: 2000000 }]
        usage_limits: { type: cost, credit_limit: 500, alert_threshold: 400.5, periodic_reset: monthly }
      - id: ws_prod
        usage_limits:
          - type: tokens
            credit_limit: 0.25
custom_scopes: [reports.read, 'x.y']
keys:
  - id: key_ops
    name: Ops automation
    type: organisation-service
    organisation_id: org_acme
    sha256: \"84ffe7eb22d1a5621ef8147e145f9207f622655fe664f1b5a93ec3698fc8983d\"
    scopes: [\"workspaces.*\", \"audit_logs.list\"]

  - id: key_bot
    name: 'Research bot: it''s fine'
    type: workspace-service
    workspace_id: ws_research
    secrets:
      - sha256: \"9e886b0afd74dcba4a3d4ed2127c9d573f3f5863823f3e16605c62b01ffda4e9\"
      - sha256: 27a45114bb7ea49db3bfe9d44be345a863e06fdc0dfe79c66c85c8fa56060ef8
        expires_at: \"2026-12-01T00:00:00Z\"
    scopes:
      - completions.write
      - logs.view   # and a comment
    expires_at: 2027-06-01T00:00:00Z
    status: active
    rate_limits:
      - { type: requests, unit: rpm, value: 600 }
      - {type: requests, unit: rps, value: 5}
      - { type: tokens, unit: rpm, value: 200000 }
    models:
      - gpt-4o-mini
    max_concurrent_requests: 8
    usage_limits:
      type: tokens
      credit_limit: 10000000
      alert_threshold: 8000000
      periodic_reset: ~
  - id: key_alice
    name: Alice #1 of the team
    type: workspace-user
    workspace_id: ws_research
    user_id: usr_alice
    sha256: ~
    scopes:
    - completions.write
    status: null
model_prices:                       # US dollars per million tokens
  \"gpt-4o-mini\": { input: 0.15, output: 0.60 }
  'gpt-4o*':     { input: 2.50, output: 10 }
  o1-preview.2024/x*:
    input: 15
    output: 60.000
";

/// An organisation that accepts identity tokens, in the shapes an operator
/// writes.
const IDENTITY: &str = "\
organisations:
  - id: org_acme
    workspaces: [{ id: ws_research, slug: research }]
    identity_tokens:
      issuer: \"https://idp.example.com/\"        # `iss` must equal it
      audience: scopegate
      jwks_file: jwks.json
      algorithms: [RS256, ES256, EdDSA]
      leeway_seconds: 30
      key_type: workspace-user
      claims: { workspace: workspace_slug, scopes: scope, user: sub }
      scopes_allowed: [completions.write, logs.view]
      revoked_subjects: []
      models: [\"gpt-4o-mini\"]
      rate_limits: [{ type: requests, unit: rpm, value: 60 }]
      usage_limits: { type: tokens, credit_limit: 1000000, periodic_reset: daily }
      max_concurrent_requests: 4
  - id: org_globex
    identity_tokens:
      issuer: https://login.example.org/tenant/v2.0
      audience: 'api://scopegate'
      jwks_url: https://login.example.org/tenant/discovery/v2.0/keys
      ca_file: idp-ca.pem
      jwks_refresh_seconds: 600
      claims:
        workspace: portkey_workspace
        scopes: scp
      revoked_subjects:
        - mallory
        - \"eve\"
      rate_limits:
        - { type: tokens, unit: rpd, value: 100000 }
keys: []
";

#[test]
fn reads_identity_tokens() {
    assert!(agrees(IDENTITY));
    let doc = read(IDENTITY).expect("plain");
    let acme = doc.organisations[0]
        .identity_tokens
        .as_ref()
        .expect("identity_tokens");
    assert_eq!(acme.issuer, "https://idp.example.com/");
    assert_eq!(acme.max_concurrent_requests, Some(4));
    let globex = doc.organisations[1]
        .identity_tokens
        .as_ref()
        .expect("identity_tokens");
    assert_eq!(
        globex.jwks_url.as_deref(),
        Some("https://login.example.org/tenant/discovery/v2.0/keys")
    );
    assert_eq!(
        globex.claims.as_ref().and_then(|c| c.scopes.as_deref()),
        Some("scp")
    );
    assert_eq!(globex.revoked_subjects, ["mallory", "eve"]);
}

#[test]
fn reads_the_shapes_keys_files_use() {
    assert!(agrees(SAMPLE));
    let doc = read(SAMPLE).expect("plain");
    assert_eq!(doc.keys[1].name, "Research bot: it's fine");
    assert_eq!(doc.keys[2].name, "Alice", "` #` starts a comment");
    assert_eq!(doc.keys[2].sha256, None);
    assert_eq!(doc.keys[1].rate_limits[1].value, 5);
    assert_eq!(doc.keys[1].max_concurrent_requests, Some(8));
    assert_eq!(doc.model_prices.0[1].0, "gpt-4o*");
    assert_eq!(doc.model_prices.0[2].1.output, 60.0);
}

#[test]
fn reads_the_shipped_example() {
    let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keys.yaml"));
    assert!(agrees(text), "config/keys.yaml should take the fast path");
}

#[test]
fn reads_compact_and_flow_styles() {
    for text in [
        "keys:\n- id: a\n  type: b\n  scopes: [x.y]\n",
        "keys:\n  -   id: a\n      type: b\n",
        "  keys: []\n  custom_scopes: []\n",
        "keys:\r\n  - id: a\r\n    type: b\r\n",
        "keys: []\norganisations:\n  - id: o\n    workspaces: []\n",
        "\"keys\": []\n",
        "'keys': []\nmodel_prices: {}\n",
        "model_prices:\n  a: {input: 0, output: 0}\n  \"\": {input: 1.5, output: 2}\n",
        "keys:\n- id: a\n  type: b\n  usage_limits: []\n",
        "keys:\n  - id: a\n    type: b\n    usage_limits: [{type: tokens, credit_limit: 1}]\n",
        "keys:\n  - id: a\n    type: b\n    rate_limits: [ {type: t, unit: u, value: 1} , {type: r, unit: u, value: 2}]\n",
        "keys:\n  - id: a\n    type: b\n    scopes:   # the scopes\n      - x.y\n",
    ] {
        assert!(agrees(text), "{text:?}");
    }
}

#[test]
fn gives_up_on_what_it_does_not_read() {
    for text in [
        "",
        "# nothing\n",
        "---\nkeys: []\n",
        "keys: []\n...\n",
        "%YAML 1.2\n---\nkeys: []\n",
        "keys:\n\t- id: a\n",
        "keys: &k []\n",
        "keys: !!seq []\n",
        "keys:\n  - id: *a\n    type: b\n",
        "keys:\n  - id: a\n    type: b\n    name: |\n      text\n",
        "keys:\n  - id: a\n    type: b\n    name: first\n      second\n",
        "keys:\n  - id: \"a\\u0041\"\n    type: b\n",
        "keys:\n  - id: \"a\n    b\"\n    type: b\n",
        "keys: [[a]]\n",
        "keys:\n  - id: a\n    type: b\n    scopes: [a, [b]]\n",
        "keys:\n  - id: a\n    type: b\n    scopes: [a, ]\n",
        "keys:\n  - id: a\n    type: b\n    bogus: 1\n",
        "keys:\n  - id: a\n    id: b\n    type: b\n",
        "keys:\n  - id: a\n",
        "keys:\n  - id: a\n    type: b\n    name:\n",
        "keys:\n  - id: a\n    type: b\n    name: # nothing\n",
        "keys:\n  - id: a\n    type: b\n    rate_limits: [{type: r, unit: u, value: 0x10}]\n",
        "keys:\n  - id: a\n    type: b\n    rate_limits: [{type: r, unit: u, value: '5'}]\n",
        "keys:\n  - id: a\n    type: b\n    rate_limits: [{type: r, unit: u, value: 010}]\n",
        "keys:\n  - id: a\n    type: b\n    name: a: b\n",
        "keys:\n  - id: a\n    type: b\n    name: - x\n",
        "keys:\n  - id: a\n    type: b\n    secrets: ~\n",
        "keys:\n  - - id: a\n",
        "keys:\n  -\n    id: a\n    type: b\n",
        "? keys\n: []\n",
        "keys: []\nkeys: []\n",
        "keys:\n  - id: a\n    type: b\n   scopes: []\n",
        "keys:\n  - id: a\u{2028}\n    type: b\n",
        "keys:\n  - id: a\u{85}\n    type: b\n",
        "keys:\n  - id: a\u{7}\n    type: b\n",
        "model_prices:\n  a: {input: 1}\n",
        "model_prices:\n  a: {input: 1, output: 2, x: 3}\n",
        "model_prices:\n  a: {input: 1, output: 2}\n  \"a\": {input: 1, output: 2}\n",
        "model_prices:\n  \"a\\\\b\": {input: 1, output: 2}\n",
        "model_prices:\n  'a''b': {input: 1, output: 2}\n",
        "model_prices:\n  a b: {input: 1, output: 2}\n",
        "model_prices:\n  a:b: {input: 1, output: 2}\n",
        "model_prices:\n  *a: {input: 1, output: 2}\n",
        "model_prices: ~\n",
        "keys:\n  - id: a\n    type: b\n    usage_limits: {type: tokens}\n",
        "keys:\n  - id: a\n    type: b\n    usage_limits: {type: t, credit_limit: '1'}\n",
        "keys:\n  - id: a\n    type: b\n    usage_limits: {type: t, credit_limit: 1e3}\n",
        "keys:\n  - id: a\n    type: b\n    usage_limits: {type: t, credit_limit: .inf}\n",
        "keys:\n  - id: a\n    type: b\n    usage_limits: {type: t, credit_limit: 1, alert_threshold: ~}\n",
        "keys:\n  - id: a\n    type: b\n    models: ~\n",
        "keys:\n  - id: a\n    type: b\n    max_concurrent_requests: ~\n",
        "organisations:\n  - id: o\n    identity_tokens: {issuer: i}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      bogus: 1\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      claims: {bogus: x}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      claims: ~\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      leeway_seconds: ~\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      revoked_subjects: ~\n",
        "organisations:\n  - id: o\n    identity_tokens: ~\n",
    ] {
        assert!(read(text).is_none(), "{text:?}");
    }
}

/// xorshift64*: a small deterministic generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Mutates a valid file thousands of ways with characters that matter to
/// YAML; every mutant the fast reader accepts must read the same in
/// serde_yaml.
#[test]
fn agrees_with_serde_yaml_on_mutated_files() {
    const ALPHABET: &[&str] = &[
        " ", " ", "  ", "\n", "\n  ", "\n    ", "-", "- ", ":", ": ", "#", " #", "\"", "'", "''",
        "[", "]", "{", "}", ",", ", ", "~", "&", "*", "!", "|", ">", "?", "\t", "\r", "\\", "a",
        "0", "null", "é", "%", "@", "`", "---", "...", "0x1", "+",
    ];
    let bases = [
        SAMPLE,
        IDENTITY,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config/keys.yaml")),
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut accepted, mut total) = (0, 0);
    for _ in 0..6000 {
        let mut text = bases[rng.below(bases.len())].to_string();
        for _ in 0..1 + rng.below(3) {
            let mut at = rng.below(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let piece = ALPHABET[rng.below(ALPHABET.len())];
            match rng.below(3) {
                0 => text.insert_str(at, piece),
                1 => {
                    let mut end = (at + 1 + rng.below(3)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(at..end, "");
                }
                _ => {
                    let mut end = (at + 1).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(at..end, piece);
                }
            }
        }
        total += 1;
        if agrees(&text) {
            accepted += 1;
        }
    }
    // The test means something only if many mutants are still plain.
    assert!(
        accepted * 5 > total,
        "only {accepted} of {total} mutants were read"
    );
}

/// Puts awkward scalars in every kind of position.
#[test]
fn agrees_with_serde_yaml_on_awkward_scalars() {
    const SCALARS: &[&str] = &[
        "a",
        "~",
        "null",
        "Null",
        "NULL",
        "nULL",
        "true",
        "no",
        "123",
        "-1",
        "1.5",
        "0x10",
        "1e3",
        ".inf",
        "''",
        "\"\"",
        "'a''b'",
        "\"a'b\"",
        "'a\"b'",
        "a b",
        "a  b",
        "a,b",
        "a]",
        "a}",
        "a#b",
        "a #b",
        "a: b",
        "a:b",
        "a:",
        "http://x",
        "[a]",
        "{a: b}",
        "[]",
        "{}",
        "- a",
        "-a",
        "?a",
        "? a",
        ":a",
        "&a a",
        "*a",
        "!a a",
        "|",
        ">",
        "%a",
        "@a",
        "`a`",
        "é",
        "a'",
        "a\"",
        "\"a",
        "'a",
        "2027-06-01T00:00:00Z",
        "\"2027-06-01T00:00:00Z\"",
        "'#'",
        "\"#\"",
        "a ",
        "\"a\" #c",
        "'a' b",
        "\"a\"b",
        "[a, b]",
        "[a,b]",
        "[ a ]",
        "['a', \"b\"]",
        "{type: a}",
        "0",
        "0.5",
        "00.5",
        "1.",
        ".5",
        "1.50",
        "+1",
        "-0.5",
        "12345678901234567890",
        "123456789012345678901234",
        "0.1000000000000000055511151231257827",
        "1_000",
        "0o17",
        ".nan",
        "a.b",
        "gpt-4o*",
        "\"gpt-4o*\"",
        "'gpt-4o*'",
        "o1/x.y",
        "a*",
        "1.5e3",
    ];
    let templates = [
        "keys:\n  - id: k\n    type: t\n    name: {S}\n",
        "keys:\n  - id: {S}\n    type: t\n",
        "keys:\n  - id: k\n    type: t\n    status: {S}\n",
        "keys:\n  - id: k\n    type: t\n    scopes: [x, {S}]\n",
        "keys:\n  - id: k\n    type: t\n    scopes:\n      - {S}\n",
        "keys:\n  - id: k\n    type: t\n    scopes: {S}\n",
        "keys:\n  - {id: k, type: {S}}\n",
        "keys:\n  - id: k\n    type: t\n    rate_limits: [{type: r, unit: u, value: {S}}]\n",
        "organisations:\n  - id: o\n    workspaces:\n      - id: w\n        slug: {S}\n",
        "organisations:\n  - id: o\n    workspaces:\n      - id: w\n        models: [{S}]\n",
        "keys:\n  - id: k\n    type: t\n    max_concurrent_requests: {S}\n",
        "keys:\n  - id: k\n    type: t\n    usage_limits: {type: {S}, credit_limit: 5}\n",
        "keys:\n  - id: k\n    type: t\n    usage_limits: {type: t, credit_limit: {S}}\n",
        "keys:\n  - id: k\n    type: t\n    usage_limits:\n      type: t\n      credit_limit: 1\n      alert_threshold: {S}\n      periodic_reset: {S}\n",
        "model_prices:\n  {S}: {input: 1, output: 2}\n",
        "model_prices:\n  m: {input: {S}, output: 2}\n",
        "model_prices:\n  m:\n    input: 1\n    output: {S}\n",
        "custom_scopes: {S}\n",
        "custom_scopes:\n- {S}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: {S}\n      audience: {S}\n",
        "organisations:\n  - id: o\n    identity_tokens: {issuer: i, audience: a, jwks_url: {S}}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      jwks_file: {S}\n      ca_file: {S}\n      key_type: {S}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      leeway_seconds: {S}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      jwks_refresh_seconds: {S}\n      max_concurrent_requests: {S}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      algorithms: [RS256, {S}]\n      scopes_allowed:\n        - {S}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      claims: {workspace: {S}, user: {S}}\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      claims:\n        scopes: {S}\n      revoked_subjects: [{S}]\n",
        "organisations:\n  - id: o\n    identity_tokens:\n      issuer: i\n      audience: a\n      models: [{S}]\n      usage_limits: {type: tokens, credit_limit: {S}}\n",
    ];
    let mut accepted = 0;
    for template in templates {
        for s in SCALARS {
            if agrees(&template.replace("{S}", s)) {
                accepted += 1;
            }
        }
    }
    assert!(accepted > 200, "only {accepted} cases were read");
}
