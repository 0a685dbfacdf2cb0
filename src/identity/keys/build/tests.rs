use super::*;
use crate::identity::keys::digest;

/// The 64-hex SHA-256 of a made-up secret.
fn h(secret: &str) -> String {
    hex::encode(digest(secret.as_bytes()))
}

/// A valid two-key document with one organisation and two workspaces; the
/// `EXTRA` line is replaced by the test's extra keys.
fn doc_with(extra_keys: &str) -> String {
    format!(
        "\
organisations:
  - id: org_a
    workspaces:
      - id: ws_a
        slug: a
      - id: ws_b
keys:
  - id: k_admin
    type: organisation-service
    sha256: \"{}\"
    scopes: [\"workspaces.*\"]
  - id: k_bot
    type: workspace-service
    workspace_id: a
    sha256: \"{}\"
    scopes: [completions.write]
{extra_keys}",
        h("admin"),
        h("bot")
    )
}

fn parse(yaml: &str) -> KeysDocument {
    serde_yaml::from_str(yaml).expect("test document is valid YAML")
}

fn build(yaml: &str) -> Result<Snapshot, Vec<Problem>> {
    build_snapshot(&parse(yaml), &ScopeRegistry::builtin())
}

fn snapshot(yaml: &str) -> Snapshot {
    match build(yaml) {
        Ok(s) => s,
        Err(p) => panic!("expected a valid document, got {p:#?}"),
    }
}

/// The problems as `path: message` lines.
fn problems(yaml: &str) -> Vec<String> {
    match build(yaml) {
        Ok(_) => panic!("expected problems"),
        Err(p) => p.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts exactly one problem, returns it.
fn one_problem(yaml: &str) -> String {
    let p = problems(yaml);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap_or_default()
}

fn key(extra: &str) -> String {
    doc_with(extra)
}

#[test]
fn valid_document_builds_an_indexed_snapshot() {
    let s = snapshot(&doc_with(""));
    let (idx, bot) = s.key_by_id("k_bot").expect("k_bot");
    assert_eq!(bot.key_type, KeyType::WorkspaceService);
    assert_eq!(bot.status, KeyStatus::Active);
    let (found, entry) = s.lookup(&digest(b"bot")).expect("secret indexed");
    assert_eq!(found, idx);
    assert_eq!(entry.expires_at, None);
    let ws = bot.workspace.expect("workspace key");
    assert_eq!(
        &*s.workspace(ws).id,
        "ws_a",
        "the slug resolves to the canonical workspace"
    );
    assert_eq!(s.organisation(bot.organisation).id.as_ref(), "org_a");
    let (_, admin) = s.key_by_id("k_admin").expect("admin");
    assert_eq!(admin.workspace, None);
    assert!(s.lookup(&digest(b"nobody")).is_none());
}

#[test]
fn workspaces_resolve_by_id_and_by_slug() {
    let s = snapshot(&doc_with(""));
    assert_eq!(s.workspace_by_name("a"), s.workspace_by_name("ws_a"));
    assert!(s.workspace_by_name("ws_b").is_some());
    assert!(s.workspace_by_name("b").is_none());
}

#[test]
fn wildcards_expand_at_load_per_key_type() {
    let yaml = key(&format!(
        "  - id: k_all
    type: workspace-user
    workspace_id: ws_b
    user_id: usr_1
    sha256: \"{}\"
    scopes: [\"*\"]
",
        h("all")
    ));
    let s = snapshot(&yaml);
    let reg = ScopeRegistry::builtin();
    let id = |n: &str| reg.id(n).expect("known scope");
    let (_, admin) = s.key_by_id("k_admin").expect("admin");
    assert!(admin.scopes.contains(id("workspaces.delete")));
    assert!(admin.scopes.contains(id("workspaces.list")));
    assert!(!admin.scopes.contains(id("configs.read")));
    let (_, user) = s.key_by_id("k_all").expect("user");
    assert!(user.scopes.contains(id("completions.write")));
    assert!(user.scopes.contains(id("prompts.publish")));
    assert!(!user.scopes.contains(id("workspace_user_api_keys.create")));
    assert!(!user.scopes.contains(id("workspaces.delete")));
    assert!(!user.scopes.contains(id("audit_logs.list")));
}

#[test]
fn duplicate_ids_are_problems() {
    let yaml = format!(
        "\
organisations:
  - id: org_a
    workspaces: [{{id: ws_a}}, {{id: ws_a}}]
  - id: org_a
    workspaces: [{{id: ws_a}}]
keys:
  - {{id: k, type: organisation-service, organisation_id: org_a, sha256: \"{}\", scopes: [logs.list]}}
  - {{id: k, type: organisation-service, organisation_id: org_a, sha256: \"{}\", scopes: [logs.list]}}
",
        h("1"),
        h("2")
    );
    assert_eq!(
        problems(&yaml),
        vec![
            "organisations[1].id: duplicate organisation id `org_a` (also organisations[0])",
            "organisations[0].workspaces[1].id: duplicate workspace id `ws_a` (also organisations[0].workspaces[0])",
            "organisations[1].workspaces[0].id: duplicate workspace id `ws_a` (also organisations[0].workspaces[0])",
            "keys[1].id: duplicate key id `k` (also keys[0])",
        ]
    );
}

#[test]
fn slugs_are_unique_and_never_another_workspaces_id() {
    let yaml = "\
organisations:
  - id: org_a
    workspaces:
      - { id: ws_a }
      - { id: ws_b, slug: ws_a }
      - { id: ws_c, slug: same }
      - { id: ws_d, slug: same }
      - { id: ws_e, slug: ws_e }
keys: []
";
    assert_eq!(
        problems(yaml),
        vec![
            "organisations[0].workspaces[1].slug: workspace slug `ws_a` is the id of another workspace (organisations[0].workspaces[0]); a name must lead to one workspace",
            "organisations[0].workspaces[3].slug: duplicate workspace slug `same` (also organisations[0].workspaces[2])",
        ]
    );
}

#[test]
fn a_workspace_may_use_its_own_id_as_slug() {
    let yaml = "organisations: [{id: o, workspaces: [{id: w, slug: w}]}]\nkeys: []\n";
    let s = snapshot(yaml);
    assert!(s.workspace_by_name("w").is_some());
}

#[test]
fn ids_are_restricted_to_header_and_label_safe_characters() {
    let yaml = format!(
        "organisations: [{{id: \"org a\", workspaces: [{{id: \"\", slug: \"s/x\"}}]}}]
keys:
  - {{id: \"{}\", type: organisation-service, sha256: \"{}\", scopes: [logs.list]}}
",
        "k".repeat(129),
        h("1")
    );
    let p = problems(&yaml);
    assert_eq!(p.len(), 4, "{p:#?}");
    assert_eq!(
        p[0],
        "organisations[0].id: organisation id `org a` must be 1 to 128 characters of letters, \
         digits, `.`, `_`, `:` and `-` (ids go into HTTP headers and metric labels)"
    );
    assert_eq!(
        p[1],
        "organisations[0].workspaces[0].id: workspace id must not be empty"
    );
    assert!(
        p[2].starts_with(
            "organisations[0].workspaces[0].slug: workspace slug `s/x` must be 1 to 128"
        ),
        "{}",
        p[2]
    );
    assert!(p[3].starts_with("keys[0].id: key id `kkkk"), "{}", p[3]);
}

#[test]
fn secret_hashes_must_be_64_hex_digits_and_are_never_echoed() {
    let yaml = key(
        "  - {id: k3, type: workspace-service, workspace_id: ws_a, sha256: sgk-my-real-secret, scopes: [logs.view]}
  - {id: k4, type: workspace-service, workspace_id: ws_a, sha256: \"zz00000000000000000000000000000000000000000000000000000000000000\", scopes: [logs.view]}
",
    );
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2].sha256: sha256 must be 64 hex digits: the SHA-256 of the secret, as `scopegate hash-key` prints it; this value has 18 characters",
            "keys[3].sha256: sha256 must be 64 hex digits: the SHA-256 of the secret, as `scopegate hash-key` prints it; this value has characters that are not hex digits",
        ]
    );
}

#[test]
fn upper_case_hashes_are_accepted() {
    let yaml = key(&format!(
        "  - {{id: k3, type: workspace-service, workspace_id: ws_a, sha256: \"{}\", scopes: [logs.view]}}\n",
        h("upper").to_ascii_uppercase()
    ));
    let s = snapshot(&yaml);
    assert!(s.lookup(&digest(b"upper")).is_some());
}

#[test]
fn secret_hashes_are_unique_across_the_file() {
    let yaml = key(&format!(
        "  - id: k3
    type: workspace-service
    workspace_id: ws_a
    scopes: [logs.view]
    secrets:
      - sha256: \"{new}\"
      - sha256: \"{bot}\"
      - sha256: \"{new_upper}\"
",
        new = h("new"),
        bot = h("bot"),
        new_upper = h("new").to_ascii_uppercase()
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2].secrets[1].sha256: this hash is also the secret of keys[1] (`k_bot`); every secret must be unique across the file",
            "keys[2].secrets[2].sha256: this hash appears twice in this key's secrets",
        ]
    );
}

#[test]
fn a_key_has_exactly_one_of_sha256_and_secrets() {
    let yaml = key(&format!(
        "  - {{id: both, type: workspace-service, workspace_id: ws_a, sha256: \"{a}\", secrets: [{{sha256: \"{b}\"}}], scopes: [logs.view]}}
  - {{id: none, type: workspace-service, workspace_id: ws_a, scopes: [logs.view]}}
  - {{id: empty, type: workspace-service, workspace_id: ws_a, secrets: [], scopes: [logs.view]}}
",
        a = h("a"),
        b = h("b")
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2].secrets: give either `sha256` or `secrets`, not both",
            "keys[3]: a key needs `sha256` (the SHA-256 of its secret) or a non-empty `secrets` list",
            "keys[4].secrets: `secrets` is empty; a key needs at least one secret hash",
        ]
    );
}

#[test]
fn rotation_secrets_keep_their_own_expiry() {
    let yaml = key(&format!(
        "  - id: k3
    type: workspace-service
    workspace_id: ws_a
    scopes: [logs.view]
    expires_at: \"2027-06-01T00:00:00Z\"
    secrets:
      - sha256: \"{}\"
      - sha256: \"{}\"
        expires_at: \"2026-12-01T00:00:00+01:00\"
",
        h("new"),
        h("old")
    ));
    let s = snapshot(&yaml);
    let (idx, k) = s.key_by_id("k3").expect("k3");
    assert_eq!(k.expires_at, Some(1_811_808_000_000));
    let (new_idx, new) = s.lookup(&digest(b"new")).expect("new");
    assert_eq!((new_idx, new.expires_at), (idx, None));
    let (_, old) = s.lookup(&digest(b"old")).expect("old");
    assert_eq!(old.expires_at, Some(1_796_079_600_000));
}

#[test]
fn expiry_must_be_rfc3339() {
    let yaml = key(&format!(
        "  - id: k3
    type: workspace-service
    workspace_id: ws_a
    scopes: [logs.view]
    expires_at: \"2027-06-01\"
    secrets:
      - sha256: \"{}\"
        expires_at: tomorrow
",
        h("new")
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2].secrets[0].expires_at: expires_at `tomorrow` is not an RFC 3339 timestamp such as `2027-06-01T00:00:00Z`",
            "keys[2].expires_at: expires_at `2027-06-01` is not an RFC 3339 timestamp such as `2027-06-01T00:00:00Z`",
        ]
    );
}

#[test]
fn key_type_must_be_one_of_three() {
    let yaml = key(&format!(
        "  - {{id: k3, type: admin, sha256: \"{}\", scopes: [logs.view]}}\n",
        h("3")
    ));
    assert_eq!(
        one_problem(&yaml),
        "keys[2].type: unknown key type `admin`; the types are `organisation-service` (admin key), `workspace-service` and `workspace-user`"
    );
}

#[test]
fn admin_keys_have_no_workspace() {
    let yaml = key(&format!(
        "  - {{id: k3, type: organisation-service, workspace_id: ws_a, sha256: \"{}\", scopes: [logs.view]}}\n",
        h("3")
    ));
    assert_eq!(
        one_problem(&yaml),
        "keys[2].workspace_id: an organisation-service (admin) key must not have a workspace_id: admin keys act across their whole organisation"
    );
}

#[test]
fn workspace_keys_name_an_existing_workspace() {
    let yaml = key(&format!(
        "  - {{id: k3, type: workspace-service, sha256: \"{}\", scopes: [logs.view]}}
  - {{id: k4, type: workspace-user, user_id: u, workspace_id: ws_x, sha256: \"{}\", scopes: [logs.view]}}
  - {{id: k5, type: workspace-user, user_id: u, workspace_id: ws_bb, sha256: \"{}\", scopes: [logs.view]}}
",
        h("3"),
        h("4"),
        h("5")
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2]: a workspace-service key needs workspace_id: the id or slug of its workspace",
            "keys[3].workspace_id: unknown workspace `ws_x` (did you mean `ws_a`?)",
            "keys[4].workspace_id: unknown workspace `ws_bb` (did you mean `ws_b`?)",
        ]
    );
}

#[test]
fn organisation_rules() {
    let two_orgs = |keys: &str| {
        format!(
            "organisations:\n  - {{id: org_a, workspaces: [{{id: ws_a}}]}}\n  - {{id: org_b, workspaces: [{{id: ws_b}}]}}\nkeys:\n{keys}"
        )
    };
    let yaml = two_orgs(&format!(
        "  - {{id: k1, type: organisation-service, sha256: \"{}\", scopes: [logs.view]}}
  - {{id: k2, type: organisation-service, organisation_id: org_x, sha256: \"{}\", scopes: [logs.view]}}
  - {{id: k3, type: workspace-service, organisation_id: org_b, workspace_id: ws_a, sha256: \"{}\", scopes: [logs.view]}}
",
        h("1"),
        h("2"),
        h("3")
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[0]: an organisation-service key needs organisation_id when the file defines 2 organisations",
            "keys[1].organisation_id: unknown organisation `org_x` (did you mean `org_a`?)",
            "keys[2].organisation_id: workspace `ws_a` belongs to organisation `org_a`, not `org_b`",
        ]
    );
    // A workspace key's workspace names its organisation.
    let yaml = two_orgs(&format!(
        "  - {{id: k1, type: workspace-service, workspace_id: ws_b, sha256: \"{}\", scopes: [logs.view]}}
  - {{id: k2, type: organisation-service, organisation_id: org_b, sha256: \"{}\", scopes: [logs.view]}}
",
        h("1"),
        h("2")
    ));
    let s = snapshot(&yaml);
    for id in ["k1", "k2"] {
        let (_, k) = s.key_by_id(id).expect("key");
        assert_eq!(&*s.organisation(k.organisation).id, "org_b");
    }
}

#[test]
fn admin_key_without_any_organisation() {
    let yaml = format!(
        "keys: [{{id: k1, type: organisation-service, sha256: \"{}\", scopes: [logs.view]}}]\n",
        h("1")
    );
    assert_eq!(
        one_problem(&yaml),
        "keys[0]: the file defines no organisations; add one under `organisations`"
    );
}

#[test]
fn user_id_is_for_workspace_user_keys_only() {
    let yaml = key(&format!(
        "  - {{id: k3, type: workspace-user, workspace_id: ws_a, sha256: \"{}\", scopes: [logs.view]}}
  - {{id: k4, type: workspace-service, workspace_id: ws_a, user_id: u1, sha256: \"{}\", scopes: [logs.view]}}
  - {{id: k5, type: workspace-user, workspace_id: ws_a, user_id: \"a b\", sha256: \"{}\", scopes: [logs.view]}}
  - {{id: k6, type: workspace-user, workspace_id: ws_a, user_id: alice@example.com, sha256: \"{}\", scopes: [logs.view]}}
",
        h("3"),
        h("4"),
        h("5"),
        h("6")
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2]: a workspace-user key needs user_id: the user it belongs to",
            "keys[3].user_id: user_id is only for workspace-user keys; a workspace-service key must not have one",
            "keys[4].user_id: user_id `a b` must be 1 to 256 visible ASCII characters without spaces (it is sent upstream in x-scopegate-user-id)",
        ]
    );
}

#[test]
fn scope_typos_name_the_nearest_scope() {
    let yaml = key(&format!(
        "  - {{id: k3, type: workspace-service, workspace_id: ws_a, sha256: \"{}\", scopes: [logs.view, completions.wirte, \"workspace.*\"]}}\n",
        h("3")
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2].scopes[1]: unknown scope `completions.wirte` (did you mean `completions.write`?)",
            "keys[2].scopes[2]: unknown scope `workspace.*` (did you mean `workspaces.*`?)",
        ]
    );
}

#[test]
fn scopes_must_suit_the_key_type() {
    let yaml = key(&format!(
        "  - {{id: k3, type: organisation-service, sha256: \"{}\", scopes: [completions.write]}}
  - {{id: k4, type: workspace-user, workspace_id: ws_a, user_id: u, sha256: \"{}\", scopes: [\"organisation_users.*\", workspace_user_api_keys.create]}}
",
        h("3"),
        h("4")
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2].scopes[0]: scope `completions.write` is not allowed for a organisation-service key: only workspace keys (workspace-service, workspace-user) may hold it",
            "keys[3].scopes[0]: scope `organisation_users.*` grants nothing to a workspace-user key",
            "keys[3].scopes[1]: scope `workspace_user_api_keys.create` is not allowed for a workspace-user key: only service keys (organisation-service, workspace-service) may hold it",
        ]
    );
}

#[test]
fn every_key_needs_a_scope() {
    let yaml = key(&format!(
        "  - {{id: k3, type: workspace-service, workspace_id: ws_a, sha256: \"{}\"}}\n",
        h("3")
    ));
    assert_eq!(
        one_problem(&yaml),
        "keys[2].scopes: every key needs at least one scope"
    );
}

#[test]
fn custom_scopes_are_valid_scopes_for_keys() {
    let yaml = format!(
        "custom_scopes: [reports.read]\n{}",
        key(&format!(
            "  - {{id: k3, type: workspace-user, workspace_id: ws_a, user_id: u, sha256: \"{}\", scopes: [reports.read]}}\n",
            h("3")
        ))
    );
    // Not used by any route: valid, grants nothing.
    let s = snapshot(&yaml);
    assert_eq!(s.custom_scopes(), ["reports.read".to_string()]);
    assert!(s.key_by_id("k3").expect("k3").1.scopes.is_empty());
    // Used by a route: the registry knows it, and the key holds it.
    let reg = ScopeRegistry::with_custom(["reports.read"]).expect("registry");
    let s = build_snapshot(&parse(&yaml), &reg).expect("valid");
    let id = reg.id("reports.read").expect("custom id");
    assert!(s.key_by_id("k3").expect("k3").1.scopes.contains(id));
}

#[test]
fn custom_scope_rules() {
    let yaml = "custom_scopes: [\"\", reports.read, reports.read, Reports.read, \"reports.*\", logs.view]\nkeys: []\n";
    assert_eq!(
        problems(yaml),
        vec![
            "custom_scopes[0]: custom scope must not be empty",
            "custom_scopes[2]: duplicate custom scope `reports.read` (also custom_scopes[1])",
            "custom_scopes[3]: custom scope `Reports.read` must look like `resource.action`: lower-case letters, digits and `_`, a dot, then letters, digits and `_`",
            "custom_scopes[4]: custom scope `reports.*` must look like `resource.action`: lower-case letters, digits and `_`, a dot, then letters, digits and `_`",
            "custom_scopes[5]: `logs.view` is a built-in scope; custom_scopes lists only scopes that are not in the vocabulary",
        ]
    );
}

#[test]
fn status_defaults_to_active_and_must_be_known() {
    let yaml = key(&format!(
        "  - {{id: k3, type: workspace-service, workspace_id: ws_a, status: exhausted, sha256: \"{}\", scopes: [logs.view]}}\n",
        h("3")
    ));
    assert_eq!(
        snapshot(&yaml).key_by_id("k3").expect("k3").1.status,
        KeyStatus::Exhausted
    );
    let yaml = key(&format!(
        "  - {{id: k3, type: workspace-service, workspace_id: ws_a, status: disabled, sha256: \"{}\", scopes: [logs.view]}}\n",
        h("3")
    ));
    assert_eq!(
        one_problem(&yaml),
        "keys[2].status: unknown status `disabled`; expected `active`, `revoked` or `exhausted`"
    );
}

#[test]
fn rate_limit_rules() {
    let yaml = key(&format!(
        "  - id: k3
    type: workspace-service
    workspace_id: ws_a
    sha256: \"{}\"
    scopes: [logs.view]
    rate_limits:
      - {{ type: tokens, unit: rpm, value: 10 }}
      - {{ type: request, unit: rps, value: 10 }}
      - {{ type: requests, unit: rpw, value: 10 }}
      - {{ type: requests, unit: rph, value: 0 }}
      - {{ type: requests, unit: rpd, value: 4294967296 }}
      - {{ type: requests, unit: rph, value: 5 }}
",
        h("3")
    ));
    assert_eq!(
        problems(&yaml),
        vec![
            "keys[2].rate_limits[1].type: unknown rate limit type `request` (did you mean `requests`?); expected `requests` or `tokens`",
            "keys[2].rate_limits[2].unit: unknown rate limit unit `rpw`; expected `rps`, `rpm`, `rph` or `rpd`",
            "keys[2].rate_limits[3].value: rate limit value must be at least 1",
            "keys[2].rate_limits[4].value: a requests rate limit value must be at most 4294967295",
            "keys[2].rate_limits[5].unit: a second `rph` requests limit (also rate_limits[3]); each unit may appear once per type and key",
        ]
    );
}

fn limited(limits: &str) -> String {
    key(&format!(
        "  - id: k3
    type: workspace-service
    workspace_id: ws_a
    sha256: \"{}\"
    scopes: [logs.view]
    rate_limits: {limits}
",
        h("3")
    ))
}

#[test]
fn rate_limits_are_parsed() {
    let s = snapshot(&limited(
        "[{type: requests, unit: rps, value: 5}, {type: requests, unit: rpd, value: 4294967295}]",
    ));
    let (_, k) = s.key_by_id("k3").expect("k3");
    assert_eq!(
        k.rate_limits,
        vec![
            RateLimit {
                value: 5,
                period: std::time::Duration::from_secs(1)
            },
            RateLimit {
                value: u32::MAX,
                period: std::time::Duration::from_secs(86_400)
            },
        ]
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = format!(
        "custom_scopes: [logs.view]
organisations:
  - id: org_a
    workspaces: [{{id: ws_a}}, {{id: ws_a}}]
keys:
  - {{id: k1, type: workspace-service, workspace_id: nowhere, sha256: \"{}\", scopes: [logz.view]}}
  - {{id: k1, type: bogus, sha256: short, scopes: []}}
",
        h("1")
    );
    let p = problems(&yaml);
    assert_eq!(p.len(), 7, "{p:#?}");
    for expected in [
        "custom_scopes[0]:",
        "organisations[0].workspaces[1].id:",
        "keys[0].workspace_id:",
        "keys[0].scopes[0]: unknown scope `logz.view` (did you mean `logs.view`?)",
        "keys[1].id: duplicate key id",
        "keys[1].type:",
        "keys[1].sha256:",
    ] {
        assert!(
            p.iter().any(|x| x.starts_with(expected)),
            "{expected} in {p:#?}"
        );
    }
}

#[test]
fn an_empty_document_is_an_empty_snapshot() {
    let s = snapshot("keys: []\n");
    assert!(s.keys().is_empty());
}

#[test]
fn problem_display() {
    assert_eq!(
        Problem::new("keys[0].id", "bad").to_string(),
        "keys[0].id: bad"
    );
    assert_eq!(Problem::new("", "bad").to_string(), "bad");
}

#[test]
fn shown_escapes_and_cuts() {
    assert_eq!(shown("a\nb\u{1b}c"), "a\\nb\\u{1b}c");
    assert_eq!(shown(&"x".repeat(100)).chars().count(), 81);
}

#[test]
fn key_ids_may_not_take_the_token_prefix() {
    let p = one_problem(&key(&format!(
        "  - id: \"token:alice\"\n    type: workspace-service\n    workspace_id: a\n    \
         sha256: \"{}\"\n    scopes: [completions.write]\n",
        h("alice")
    )));
    assert!(
        p.starts_with("keys[2].id: key id `token:alice` must not start with `token:`"),
        "{p}"
    );
}

#[test]
fn digests_decode_in_either_case_and_refuse_any_other_byte() {
    let lower = "00ff10a0b1c2d3e4f5060708090a0b0c0d0e0f101112131415161718191a9fAF";
    let want: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&lower[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(super::parse_digest(lower).expect("valid")[..], want[..]);
    let upper = lower.to_ascii_uppercase();
    assert_eq!(super::parse_digest(&upper).expect("valid")[..], want[..]);
    for bad in [b'g', b'G', b'/', b':', b'@', b'`', b' ', 0x7f] {
        for at in [0, 1, 62, 63] {
            let mut s = lower.as_bytes().to_vec();
            s[at] = bad;
            let s = String::from_utf8(s).expect("ascii");
            let e = super::parse_digest(&s).expect_err("not hex");
            assert!(e.ends_with("characters that are not hex digits"), "{e}");
        }
    }
    let e = super::parse_digest(&lower[..62]).expect_err("short");
    assert!(e.ends_with("this value has 62 characters"), "{e}");
}
