//! The identity headers a forwarded request carries upstream
//! (docs/reference.md#what-the-upstream-receives), as data: the gateway
//! writes them, `scopegate explain` prints them.

use crate::decision::decide::Verdict;
use crate::identity::keys::Snapshot;

/// The `x-scopegate-*` headers of an allowed request, in order: key id and
/// type, organisation, then the workspace it acts in and the user, when
/// there are. Empty when no key was identified. An identity token's are
/// `token:<subject>`, its organisation's `key_type`, and the subject as
/// the user of a `workspace-user` token (docs/reference.md#token-identity-upstream).
pub fn identity_headers<'s>(
    snap: &'s Snapshot,
    verdict: &'s Verdict,
) -> Vec<(&'static str, &'s str)> {
    if let Some(id) = &verdict.token {
        let mut headers = vec![
            ("x-scopegate-key-id", &*id.key_id),
            ("x-scopegate-key-type", id.key_type.as_str()),
            (
                "x-scopegate-organisation-id",
                &*snap.organisation(id.organisation).id,
            ),
            (
                "x-scopegate-workspace-id",
                &*snap.workspace(id.workspace).id,
            ),
        ];
        if let Some(user) = &id.user_id {
            headers.push(("x-scopegate-user-id", &**user));
        }
        return headers;
    }
    let Some(k) = verdict.key else {
        return Vec::new();
    };
    let key = snap.key(k);
    // Room for all five at once: no regrowth for the workspace and user.
    let mut headers = Vec::with_capacity(5);
    headers.extend([
        ("x-scopegate-key-id", &*key.id),
        ("x-scopegate-key-type", key.key_type.as_str()),
        (
            "x-scopegate-organisation-id",
            &*snap.organisation(key.organisation).id,
        ),
    ]);
    if let Some(ws) = verdict.workspace {
        headers.push(("x-scopegate-workspace-id", &*snap.workspace(ws).id));
    }
    if let Some(user) = &key.user_id {
        headers.push(("x-scopegate-user-id", &**user));
    }
    headers
}
