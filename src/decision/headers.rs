//! The identity headers a forwarded request carries upstream
//! (docs/reference.md#what-the-upstream-receives), as data: the gateway
//! writes them, `scopegate explain` prints them.

use crate::decision::decide::Verdict;
use crate::identity::keys::Snapshot;

/// The `x-scopegate-*` headers of an allowed request, in order: key id and
/// type, organisation, then the workspace it acts in and the user, when
/// there are. Empty when no key was identified.
pub fn identity_headers<'s>(snap: &'s Snapshot, verdict: &Verdict) -> Vec<(&'static str, &'s str)> {
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
