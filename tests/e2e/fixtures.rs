//! The keys file most tests share: two organisations, three workspaces and
//! one key per situation the decision table distinguishes. Secrets are
//! named constants so a test reads as "who is calling".

use scopegate::identity::keys::digest_hex;

/// organisation-service on org_acme: `workspaces.*`, `audit_logs.list`,
/// `configs.*`, `logs.list`.
pub const ADMIN: &str = "sk-test-admin";
/// organisation-service on org_other: `workspaces.*`.
pub const OTHER_ADMIN: &str = "sk-test-other-admin";
/// workspace-service on ws_research (slug `research`): `completions.write`,
/// `logs.view`, `configs.*`, `workspaces.read`, `workspaces.list`.
pub const BOT: &str = "sk-test-bot";
/// workspace-user usr_alice on ws_research: `completions.write`.
pub const ALICE: &str = "sk-test-alice";
/// workspace-service on ws_research: `virtual_keys.list` only.
pub const VK_LISTER: &str = "sk-test-vk-lister";
/// workspace-service on ws_research: `completions.write` and `logs.write`.
pub const LOGGER: &str = "sk-test-logger";
/// workspace-service on ws_research: `logs.write` only.
pub const LOG_WRITER: &str = "sk-test-log-writer";
/// workspace-service whose `expires_at` is in the past.
pub const EXPIRED: &str = "sk-test-expired";
/// key_rotated: new secret, and an old one whose window has closed.
pub const ROTATED_NEW: &str = "sk-test-rotated-new";
pub const ROTATED_OLD: &str = "sk-test-rotated-old";
/// key_rotating: new secret, and an old one still inside its window.
pub const ROTATING_NEW: &str = "sk-test-rotating-new";
pub const ROTATING_OLD: &str = "sk-test-rotating-old";
/// workspace-service, status revoked: `completions.write`, `configs.list`.
pub const REVOKED: &str = "sk-test-revoked";
/// workspace-service, status exhausted: `completions.write`, `configs.list`.
pub const EXHAUSTED: &str = "sk-test-exhausted";
/// key_limited (see [`limited_key_entry`]): `completions.write`, 2 requests
/// an hour (so no window boundary falls inside a test).
pub const LIMITED: &str = "sk-test-limited";
/// A secret no key holds.
pub const UNKNOWN: &str = "sk-test-nobody";

/// A minimal chat completion request body.
pub const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;

/// The shared keys file. `extra_keys` is appended to the `keys:` list
/// (indented as list items, e.g. `  - id: key_x\n    ...`).
pub fn keys_yaml_with(extra_keys: &str) -> String {
    let h = digest_hex;
    format!(
        r#"organisations:
  - id: org_acme
    workspaces:
      - id: ws_research
        slug: research
      - id: ws_prod
        slug: prod
  - id: org_other
    workspaces:
      - id: ws_other
        slug: other
keys:
  - id: key_admin
    name: Ops automation
    type: organisation-service
    organisation_id: org_acme
    sha256: "{admin}"
    scopes: ["workspaces.*", "audit_logs.list", "configs.*", "logs.list"]
  - id: key_other_admin
    name: Other org ops
    type: organisation-service
    organisation_id: org_other
    sha256: "{other_admin}"
    scopes: ["workspaces.*"]
  - id: key_bot
    name: Research bot
    type: workspace-service
    workspace_id: ws_research
    sha256: "{bot}"
    scopes: ["completions.write", "logs.view", "configs.*", "workspaces.read", "workspaces.list"]
  - id: key_alice
    name: Alice
    type: workspace-user
    workspace_id: research
    user_id: usr_alice
    sha256: "{alice}"
    scopes: ["completions.write"]
  - id: key_vk_lister
    name: Virtual key lister
    type: workspace-service
    workspace_id: ws_research
    sha256: "{vk_lister}"
    scopes: ["virtual_keys.list"]
  - id: key_logger
    name: Logger
    type: workspace-service
    workspace_id: ws_research
    sha256: "{logger}"
    scopes: ["completions.write", "logs.write"]
  - id: key_log_writer
    name: Log writer
    type: workspace-service
    workspace_id: ws_research
    sha256: "{log_writer}"
    scopes: ["logs.write"]
  - id: key_expired
    name: Expired
    type: workspace-service
    workspace_id: ws_research
    sha256: "{expired}"
    scopes: ["completions.write"]
    expires_at: "2001-01-01T00:00:00Z"
  - id: key_rotated
    name: Rotated
    type: workspace-service
    workspace_id: ws_research
    secrets:
      - sha256: "{rotated_new}"
      - sha256: "{rotated_old}"
        expires_at: "2001-01-01T00:00:00Z"
    scopes: ["completions.write"]
  - id: key_rotating
    name: Rotating
    type: workspace-service
    workspace_id: ws_research
    secrets:
      - sha256: "{rotating_new}"
      - sha256: "{rotating_old}"
        expires_at: "2999-01-01T00:00:00Z"
    scopes: ["completions.write"]
    expires_at: "2999-06-01T00:00:00Z"
  - id: key_revoked
    name: Revoked
    type: workspace-service
    workspace_id: ws_research
    sha256: "{revoked}"
    scopes: ["completions.write", "configs.list"]
    status: revoked
  - id: key_exhausted
    name: Exhausted
    type: workspace-service
    workspace_id: ws_research
    sha256: "{exhausted}"
    scopes: ["completions.write", "configs.list"]
    status: exhausted
{extra_keys}"#,
        admin = h(ADMIN.as_bytes()),
        other_admin = h(OTHER_ADMIN.as_bytes()),
        bot = h(BOT.as_bytes()),
        alice = h(ALICE.as_bytes()),
        vk_lister = h(VK_LISTER.as_bytes()),
        logger = h(LOGGER.as_bytes()),
        log_writer = h(LOG_WRITER.as_bytes()),
        expired = h(EXPIRED.as_bytes()),
        rotated_new = h(ROTATED_NEW.as_bytes()),
        rotated_old = h(ROTATED_OLD.as_bytes()),
        rotating_new = h(ROTATING_NEW.as_bytes()),
        rotating_old = h(ROTATING_OLD.as_bytes()),
        revoked = h(REVOKED.as_bytes()),
        exhausted = h(EXHAUSTED.as_bytes()),
    )
}

/// The shared keys file as is.
pub fn keys_yaml() -> String {
    keys_yaml_with("")
}

/// A `keys:` list item for key_limited, to pass to [`keys_yaml_with`].
pub fn limited_key_entry() -> String {
    format!(
        r#"  - id: key_limited
    name: Limited
    type: workspace-service
    workspace_id: ws_research
    sha256: "{}"
    scopes: ["completions.write"]
    rate_limits:
      - {{ type: requests, unit: rph, value: 2 }}
"#,
        digest_hex(LIMITED.as_bytes())
    )
}
